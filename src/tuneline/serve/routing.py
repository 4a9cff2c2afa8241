"""Canary routing: which variant answers a request. Pure functions, no I/O.

Sticky: a user's bucket is a hash of (experiment, user id), so the same user always gets the same
variant while the experiment (the champion / challenger pair) lasts, and a new challenger reshuffles
users instead of always testing on the same 10 %. A request without a user id is assigned by its
request id (not sticky: there is nobody to stick to). A request may pin a variant, by model name
(`<model>@challenger`) or header; pinned traffic is served and logged, but flagged, since it did not
come from the random split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PIN_SEPARATOR = "@"


def user_hash(user_id: str, salt: str = "") -> str:
    """A stable pseudonym of a user id (the store never keeps the raw id)."""
    return hashlib.sha256(f"{salt}\x00{user_id}".encode()).hexdigest()[:32]


def bucket(key: str, experiment: str) -> float:
    """A uniform number in [0, 1) from (experiment, key): the same inputs always give the same number."""
    digest = hashlib.sha256(f"{experiment}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def experiment_id(versions: dict[str, str]) -> str:
    """The experiment a pair of versions defines, e.g. "champion=3,challenger=4"."""
    return ",".join(f"{k}={versions[k]}" for k in sorted(versions, key=lambda v: v != "champion"))


@dataclass(frozen=True)
class Route:
    variant: str
    pinned: bool
    sticky: bool


def parse_model(requested: str | None, model_name: str, variants: list[str]) -> str | None:
    """The variant a request's `model` field pins, or None for "route me".

    Accepted: None, "", the model name, or "<model name>@<variant>" (also a bare variant name).

    Raises:
        ValueError: an unknown model or variant (the message lists what is served).
    """
    if requested in (None, "", model_name):
        return None
    name, sep, variant = requested.rpartition(PIN_SEPARATOR)
    if not sep:
        name, variant = model_name, requested
    if name == model_name and variant in variants:
        return variant
    served = ", ".join([model_name] + [f"{model_name}{PIN_SEPARATOR}{v}" for v in variants])
    raise ValueError(f"model {requested!r} is not served here; served: {served}")


def route(
    *,
    user_id: str | None,
    request_id: str,
    versions: dict[str, str],
    canary_share: float,
    pinned: str | None = None,
) -> Route:
    """Pick the variant for one request.

    Args:
        user_id: the caller's user id (header or `user` field), or None.
        request_id: this request's id (decides when there is no user id).
        versions: variant -> version being served; the challenger only when one is loaded.
        canary_share: share of users sent to the challenger, in [0, 1].
        pinned: a variant the request asked for explicitly (already validated).
    """
    if pinned is not None:
        return Route(pinned, pinned=True, sticky=False)
    if "challenger" not in versions or canary_share <= 0:
        return Route("champion", pinned=False, sticky=user_id is not None)
    key = user_id if user_id is not None else request_id
    chosen = "challenger" if bucket(key, experiment_id(versions)) < canary_share else "champion"
    return Route(chosen, pinned=False, sticky=user_id is not None)

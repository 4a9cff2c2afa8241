"""Text patterns and normalizers shared by `clean` (which removes noise) and `validate_splits`
(which proves none is left)."""

from __future__ import annotations

import re

# An HTML tag: <p>, </div>, <br/>, <a href="…">, <!-- comments -->. Requires a letter, '/' or '!' after '<'
# so that "a < b" and "x<5" survive.
HTML_TAG_RE = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", re.DOTALL)
# Named or numeric HTML entities: &amp; &nbsp; &#39; &#x27;
HTML_ENTITY_RE = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
URL_RE = re.compile(
    r"""(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"'`，。；、）)\]}]+""",
    re.IGNORECASE,
)
EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")

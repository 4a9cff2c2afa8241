"""`make demo-ab`: the serving half of the loop on the demo workspace, offline, on CPU.

1. Needs a champion (`make run`). Without a challenger, trains one the normal way: the retrain flow with
   `train.epochs=12` and `promote.keep_challenger_as_canary=true` (a DVC experiment; the gate runs; a
   passing candidate stays challenger), then puts the workspace back (`git checkout` of the files it
   changed, `dvc checkout`).
   Do not commit while it trains: `dvc exp run` restores HEAD when it ends.
2. Starts `tuneline serve` on 127.0.0.1 (canary share --share) and sends traffic from simulated users
   with the official `openai` client: prompts from the train split (never the test split: corrections
   become training data, and test answers there would leak).
3. Simulated users rate answers by how much they overlap the reference answer (ROUGE-L above each
   user's own threshold = thumbs up); some thumbs-down come with the reference as a correction.
4. Stops the server (the queue drains into the feedback store), then runs `tuneline ab report`,
   `tuneline ab decide` and `tuneline feedback export`. Numbers go to reports/ab_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ {' '.join(args)}", flush=True)
    return subprocess.run(args, cwd=ROOT, check=check, text=True)


def aliases() -> dict[str, str]:
    from tuneline.config import load_config
    from tuneline.registry.registry import aliases_of

    cfg = load_config(ROOT / "params.yaml", [])
    return aliases_of(cfg.tracking.uri, cfg.registry.model_name)


def modified() -> set[str]:
    out = subprocess.run(["git", "diff", "--name-only"], cwd=ROOT, check=True, text=True, capture_output=True)
    return set(out.stdout.split())


def make_challenger() -> None:
    print("\n== no challenger: training one (12 epochs instead of 8) through the retrain flow ==", flush=True)
    before = modified()
    sh(str(BIN / "python"), "-m", "flows.retrain", "--set", "train.epochs=12",
       "--set", "promote.keep_challenger_as_canary=true",
       "--stage", "train", "--stage", "evaluate", "--stage", "promote")
    # The experiment is recorded (`dvc exp show`) and its outputs are in the DVC cache; the workspace
    # goes back to the committed state: dvc.lock and the git-tracked metrics it changed, then the outputs.
    changed = sorted(modified() - before)
    if changed:
        sh("git", "checkout", "--", *changed)
    sh(str(BIN / "dvc"), "checkout", "--quiet")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"tuneline serve exited with {proc.returncode}")
        try:
            return httpx.get(f"{url}/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    sys.exit("tuneline serve did not become healthy in time")


def prompts(limit: int) -> list[tuple[list[dict[str, str]], str]]:
    from tuneline.lm.generate import prompts_and_references

    out = []
    with open(ROOT / "data/processed/train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            pair = prompts_and_references(json.loads(line))
            # Chat users: chat-sized prompts (the demo data also has 1,000-token continuation tasks) and
            # no tool turns (canonical records keep tool calls as text, not OpenAI `tool_calls`).
            chat = pair and pair[0] and all(m["role"] in ("system", "user", "assistant") for m in pair[0])
            if chat and len(json.dumps(pair[0])) < 1500:
                out.append(pair)
            if len(out) >= limit:
                break
    return out


def simulate(base: str, users: int, seed: int) -> dict[str, Any]:
    import httpx
    import openai

    from tuneline.evaluate.metrics import rouge_l

    rng = random.Random(seed)
    pool = prompts(400)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="demo", max_retries=2, timeout=120)
    plan = []
    for u in range(users):
        threshold = rng.uniform(0.0, 0.25)  # how demanding this user is
        for _ in range(rng.randint(1, 3)):
            plan.append((f"demo-user-{u}", threshold, rng.choice(pool), rng.random(), rng.random()))

    def one(item: Any) -> dict[str, Any]:
        user, threshold, (messages, reference), p_rate, p_fix = item
        started = time.perf_counter()
        try:
            reply = client.chat.completions.create(model="tuneline-demo", messages=messages, max_tokens=48,
                                                   user=user)
        except openai.BadRequestError as exc:  # a limit said no (e.g. serve.max_prompt_tokens): count it
            return {"user": user, "refused": str(exc)}
        latency = (time.perf_counter() - started) * 1000
        answer = reply.choices[0].message.content or ""
        rated = p_rate < 0.6
        if rated:
            good = rouge_l(answer, reference) >= threshold
            body: dict[str, Any] = {"request_id": reply.id, "thumb": "up" if good else "down"}
            if not good and p_fix < 0.4:
                body["correction"] = reference
            httpx.post(f"{base}/v1/feedback", json=body, timeout=60).raise_for_status()
        return {"user": user, "variant": reply.model_extra["tuneline"]["variant"], "latency_ms": latency,
                "tokens": reply.usage.completion_tokens, "rated": rated}

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool_:
        results = list(pool_.map(one, plan))
    wall = time.perf_counter() - started
    refused = [r for r in results if "refused" in r]
    results = [r for r in results if "refused" not in r]
    latencies = sorted(r["latency_ms"] for r in results)
    by_user = {r["user"]: r["variant"] for r in results}
    return {
        "requests": len(results), "refused": len(refused), "users": users, "wall_s": round(wall, 1),
        "requests_per_s": round(len(results) / wall, 2),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "rated": sum(r["rated"] for r in results),
        "challenger_user_share": round(sum(v == "challenger" for v in by_user.values()) / len(by_user), 3),
        "sticky": all(len({r["variant"] for r in results if r["user"] == u}) == 1 for u in by_user),
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--users", type=int, default=300, help="simulated users (1-3 requests each)")
    parser.add_argument("--share", type=float, default=0.5, help="canary share for the demo (params: 0.1)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    found = aliases()
    if "champion" not in found:
        sys.exit("no champion in the registry: run `make run` first")
    if "challenger" not in found:
        make_challenger()
        found = aliases()
        if "challenger" not in found:
            sys.exit("the new candidate did not pass the gate (reports/promote.json): no challenger to test")
    print(f"\n== serving champion v{found['champion']} and challenger v{found['challenger']} ==", flush=True)
    base = f"http://127.0.0.1:{args.port}"
    log = ROOT / ".tuneline" / "serve-demo.log"
    log.parent.mkdir(exist_ok=True)
    print(f"server log: {log}", flush=True)
    server = subprocess.Popen([str(BIN / "tuneline"), "serve", "--port", str(args.port),
                               "--set", f"serve.canary_share={args.share}"], cwd=ROOT,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        print(json.dumps(wait_healthy(base, server)), flush=True)
        numbers = simulate(base, args.users, args.seed)
    finally:
        server.send_signal(signal.SIGINT)  # graceful: the exchange queue drains into the store
        server.wait(120)
    numbers["canary_share_configured"] = args.share
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports/ab_demo.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2), flush=True)
    print("\n== A/B report, decision, feedback export ==", flush=True)
    sh(str(BIN / "tuneline"), "ab", "report")
    sh(str(BIN / "tuneline"), "ab", "decide")
    sh(str(BIN / "tuneline"), "feedback", "export")
    print("""
Look at:
  reports/ab.html            champion vs challenger: rates with intervals, the test, latency, over time
  reports/ab_decision.json   what `tuneline ab decide` did and why
  data/raw/feedback/         rated exchanges as raw training data (DVC-tracked); the next `make run`
                             ingests them through the same contracts, cleaning and dedup
  reports/ab_demo.json       this demo's traffic numbers (throughput, latency, observed canary share)
Serve it yourself: .venv/bin/tuneline serve   (then point any OpenAI client at http://127.0.0.1:8000/v1)""")


if __name__ == "__main__":
    main()

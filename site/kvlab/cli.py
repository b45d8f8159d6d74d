"""The command line (later issues and outside checks rely on it exactly).

  python -m kvlab tokenize TEXT                      → JSON list of token ids
  python -m kvlab generate --prompt TEXT [--question TEXT] [--chat] [--max-new-tokens N] [--policy JSON]
                           [--temperature T] [--top-k K] [--top-p P] [--seed S] [--json]
  python -m kvlab compare --prompt TEXT [--policy-a JSON] --policy-b JSON [generate's options] [--json]
                                                     → both runs, KL(A‖B) and top-1 per position (kvlab.compare)
  python -m kvlab chat [--policy JSON] [--max-new-tokens N] [--json] < turns.txt
                                                     → a conversation on one cache, a turn per line (kvlab.conversation)
  python -m kvlab cachemap --prompt TEXT [--question TEXT] [--chat] [--max-new-tokens N] [--policy JSON] [--json]
                                                     → per layer and KV head, the positions kept
  python -m kvlab techniques                         → the registry, as JSON
  python -m kvlab eval --policy JSON --task TASK [--context N] [--seed S] [--n N]
                       [--positions N] [--question before|after] [--json]
                                                     → quality vs the full cache (kvlab.evaluate)
  python -m kvlab profile [--json] [--out FILE] [--texts FILE] [--context N] [--queries N]
                          [--positions N] [--quant-positions N]   → the head profile (kvlab.profile)
  python -m kvlab observe --profile FILE [--json]   → the four observations (kvlab.observe)

Techniques that read the head profile (pyramidkv's entropy shape, compresskv, duo) take it
from ``--head-profile FILE``, else from the builder's (``python -m builder profile``).

Exit codes: 0 done; 2 bad input (usage, prompt, policy); 1 the artifacts or the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from .techniques import REGISTRY, PolicyError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is 2 already; keep the words short
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(message, 2))


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m kvlab", description="KV Cache Lab engine (native host)")
    ap.add_argument("--artifacts", help="built artifacts folder (default: $KVLAB_ARTIFACTS or the builder's active build)")
    ap.add_argument("--scalar", action="store_true", help="use kvstore-scalar.wasm (no SIMD)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    ap.add_argument("--head-profile", help="profile.json for the techniques that read one (default: the builder's)")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("tokenize", help="print the token ids of TEXT as JSON")
    t.add_argument("text")
    t.add_argument("--chat", action="store_true", help="render TEXT as a user turn of the chat template first")

    def sampling(g):  # what generate, compare and chat share
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        g.add_argument("--top-k", type=int, default=0)
        g.add_argument("--top-p", type=float, default=1.0)
        g.add_argument("--seed", type=int, default=0)

    def generation(g, policies=("--policy",)):  # what generate and compare share
        g.add_argument("--prompt", required=True)
        g.add_argument("--question", default="", help="read right after the prompt as its question (chunks and "
                       "importance read it apart, to route by its attention)")
        g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
        g.add_argument("--max-new-tokens", type=int, default=64)
        for flag in policies:
            g.add_argument(flag, default="{}", help='JSON, e.g. \'{"quant": {"k_bits": 4, "v_bits": 8}}\' '
                           '(default {}: the full fp32 cache)')
        sampling(g)
        g.add_argument("--ignore-eos", action="store_true", help="always make --max-new-tokens tokens")

    g = sub.add_parser("generate", help="generate text through the compressed cache")
    generation(g)
    g.add_argument("--json", action="store_true", help="print one JSON object (else: the text, then a summary)")

    cmp = sub.add_parser("compare", help="one prompt under two policies: both runs, KL(A||B) and top-1 per position "
                         "(kvlab.compare)")
    generation(cmp, ("--policy-a", "--policy-b"))
    cmp.add_argument("--json", action="store_true", help="print one JSON object (else both texts and a summary)")

    c = sub.add_parser("cachemap", help="read a prompt under a policy; print which positions each KV head keeps")
    c.add_argument("--prompt", required=True)
    c.add_argument("--question", default="", help="read right after the prompt as its question")
    c.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    c.add_argument("--policy", default="{}", help="JSON policy")
    c.add_argument("--max-new-tokens", type=int, default=1,
                   help="tokens to generate first (default 1: the map right after the prompt)")
    c.add_argument("--json", action="store_true", help="print one JSON object (else one line per layer)")

    sub.add_parser("techniques", help="print the registered techniques and their parameters as JSON")

    e = sub.add_parser("eval", help="measure a policy's quality against the full cache (kvlab.evaluate)")
    e.add_argument("--policy", default="{}", help="JSON policy; {} = the full fp32 cache")
    e.add_argument("--task", required=True, help="ppl | needle | multi-needle | multi-hop")
    e.add_argument("--context", type=int, default=1024, help="tokens before the scored part (default 1024)")
    e.add_argument("--seed", type=int, default=0, help="picks the text and generates the facts")
    e.add_argument("--n", type=int, default=10, help="questions per retrieval task (default 10)")
    e.add_argument("--positions", type=int, default=256, help="ppl: continuation tokens scored (default 256)")
    e.add_argument("--question", default="before", choices=("before", "after"),
                   help="retrieval: read the question before the cache is compressed (default) or after")
    e.add_argument("--reuse-full", action="store_true",
                   help="for the full-cache policy, compare the reference pass with itself (half the time)")
    e.add_argument("--json", action="store_true", help="print one JSON object (else a short summary)")

    ch = sub.add_parser("chat", help="a conversation on one cache: one turn per line of standard input (kvlab.conversation)")
    ch.add_argument("--policy", default="{}", help="JSON policy of the whole conversation (default {}: full fp32)")
    ch.add_argument("--max-new-tokens", type=int, default=64, help="per reply")
    sampling(ch)
    ch.add_argument("--json", action="store_true", help="print one JSON object per turn (JSON lines)")

    les = sub.add_parser("lesson", help="run a lesson's question under each of its policies (kvlab.lesson)")
    les.add_argument("id", help="the lesson's id in lessons.json")
    les.add_argument("--lessons", help="lessons.json (default: the page's, site/static/lessons.json)")
    les.add_argument("--json", action="store_true", help="print one JSON object (else one line per run)")

    p = sub.add_parser("profile", help="profile every head and layer (kvlab.profile)")
    p.add_argument("--texts", help="JSON file: a list of {kind, name, sha256, text} (default: the standard library's)")
    p.add_argument("--context", type=int, default=512, help="tokens read before the queries (default 512)")
    p.add_argument("--queries", type=int, default=32, help="one-token runs per text (default 32)")
    p.add_argument("--positions", type=int, default=16, help="positions scored per cut layer (default 16)")
    p.add_argument("--quant-positions", type=int, default=64, help="positions scored for K only / V only (default 64)")
    p.add_argument("--out", help="also write the profile to this file")
    p.add_argument("--json", action="store_true", help="print the profile as one JSON object")

    o = sub.add_parser("observe", help="the four observations of seed 001, from a profile (kvlab.observe)")
    o.add_argument("--profile", required=True, help="a profile.json written by `profile`")
    o.add_argument("--json", action="store_true", help="print one JSON object (else one line each)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "techniques":
        print(json.dumps([t.describe() for t in REGISTRY.values()], indent=1))
        return 0

    from .artifacts import ArtifactError, default_dir
    from .engine import Engine, InputError, Request
    from .store import StoreError

    try:
        if args.command == "tokenize":
            from .chat import render_chat
            from .tokenizer import Tokenizer

            from .artifacts import verify
            folder = args.artifacts or default_dir()
            verify(folder, ("tokenizer.json",))
            tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
            text = render_chat([{"role": "user", "content": args.text}]) if args.chat else args.text
            print(json.dumps(tok.encode(text)))
            return 0

        if args.command == "eval":
            return _eval(args)
        if args.command == "profile":
            return _profile(args)
        if args.command == "observe":
            return _observe(args)
        if args.command == "lesson":
            return _lesson(args)

        # validate the cheap things before loading 270 MB
        from .policy import parse_policy
        for side, text in _policies(args):
            try:
                parse_policy(text)
            except PolicyError as e:
                raise PolicyError(f"policy {side}: {e}" if side else str(e)) from None

        from .host.native import NativeHost
        host = NativeHost(args.artifacts or default_dir(), simd=not args.scalar, threads=args.threads)
        engine = Engine(host, profile=_head_profile(args))
        if args.command == "chat":
            return _chat(engine, args)
        if args.command == "cachemap":
            res = engine.generate(Request(prompt=args.prompt, question=args.question, chat=args.chat,
                                          max_new_tokens=args.max_new_tokens, policy=args.policy))
            out = {k: res[k] for k in ("prompt_ids", "ids", "policy", "eviction", "cache_bytes", "index_bytes",
                                       "savings")} | engine.cache_map()
            if args.json:
                print(json.dumps(out))
            else:
                for i, row in enumerate(out["layers"]):
                    print(f"layer {i:2d} kept {out['kept'][i]}  {row}")
            return 0
        req = Request(
            prompt=args.prompt, question=args.question, chat=args.chat, max_new_tokens=args.max_new_tokens,
            policy=getattr(args, "policy", None), temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos,
        )
        if args.command == "compare":
            return _compare(engine, req, args)
        if args.json:
            print(json.dumps(engine.generate(req)))
        else:
            def show(ev: dict) -> None:
                sys.stdout.write(ev["text"])
                sys.stdout.flush()
            res = engine.generate(req, on_token=show)
            print(
                f"\n--- {len(res['ids'])} tokens ({res['stop_reason']}), {res['ms_per_token']} ms/token; "
                f"cache {res['cache_bytes']:,} B for {res['tokens_cached']} tokens "
                f"(fp32 {res['fp32_bytes']:,} B, fp16 {res['fp16_bytes']:,} B)",
                file=sys.stderr,
            )
        return 0
    except (InputError, PolicyError) as e:
        return _fail(str(e), 2)
    except (ArtifactError, StoreError) as e:
        return _fail(str(e), 1)


def _chat(engine, args) -> int:
    """Turns from standard input, one a line; each reply as it is made (or a JSON line per
    turn). A turn the engine refuses is said on stderr and the conversation goes on."""
    from .conversation import Conversation
    from .engine import InputError, Request

    conv = Conversation(engine, args.policy, seed=args.seed)
    failed = False
    for line in sys.stdin:
        message = line.rstrip("\n")
        if not message.strip():  # a blank line is no turn
            continue
        req = Request(prompt=message, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        try:
            if args.json:
                print(json.dumps(conv.turn(message, req)), flush=True)
                continue
            res = conv.turn(message, req, on_token=lambda ev: (sys.stdout.write(ev["text"]), sys.stdout.flush()))
        except InputError as e:
            failed = True
            print(f"error: {e}", file=sys.stderr)
            continue
        print(f"\n--- turn {res['turn']}: read {len(res['prompt_ids'])} new tokens from position {res['read_from']}; "
              f"cache {res['cache_bytes']:,} B for {res['tokens_cached']} tokens", file=sys.stderr)
    return 2 if failed else 0


def _policies(args) -> list[tuple[str, str]]:
    """(side, policy JSON) of a command: ("", --policy), or ("A", …), ("B", …) for compare."""
    if args.command == "compare":
        return [("A", args.policy_a), ("B", args.policy_b)]
    return [("", args.policy)]


def _compare(engine, req, args) -> int:
    from .compare import compare

    res = compare(engine, req, args.policy_a, args.policy_b)
    if args.json:
        print(json.dumps(res))
        return 0
    for side in ("a", "b"):
        r = res[side]
        print(f"--- {side.upper()} {json.dumps(r['policy'])}: {r['cache_bytes']:,} B held, "
              f"{r['ms_per_token']} ms/token\n{r['text']}")
    d = res["first_divergence"]
    print(f"--- KL(A||B) mean {res['kld_mean']} nats, top-1 agreement {res['top1_agreement']} over "
          f"{len(res['kld'])} positions; the texts part at token {d if d is not None else '- (never)'}; "
          f"A holds {res['ratios']['cache_bytes']}x B's bytes", file=sys.stderr)
    return 0


def _head_profile(args) -> dict | None:
    """The head profile techniques read: --head-profile, else the builder's, else None."""
    from .artifacts import ArtifactError, default_profile

    path = args.head_profile or default_profile()
    if path is None:
        return None
    try:
        return json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read the head profile {path}: {e}") from None


def _eval(args) -> int:
    from .artifacts import default_dir
    from .engine import Engine
    from .evaluate import EvalError, evaluate
    from .policy import parse_policy
    from .tasks import TASKS

    if args.task not in TASKS:  # the cheap checks first, before loading 270 MB
        return _fail(f"unknown task {args.task!r}: choose one of {', '.join(TASKS)}", 2)
    parse_policy(args.policy)
    from .host.native import NativeHost
    engine = Engine(NativeHost(args.artifacts or default_dir(), simd=not args.scalar, threads=args.threads),
                    profile=_head_profile(args))
    try:
        res = evaluate(engine, args.task, args.policy, context=args.context, seed=args.seed, n=args.n,
                       positions=args.positions, reuse_full=args.reuse_full, question=args.question)
    except (EvalError, PolicyError) as e:
        return _fail(str(e), 2)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['task']}: score {res['score']:.4g} (full cache {res['score_full']:.4g}), "
              f"KL vs full {res['kld_vs_full']}, top-1 {res['top1_agreement']}, over {res['positions']} "
              f"positions; cache {res['cache_bytes']:,} B = {res['ratio_vs_fp32']}x smaller than fp32 "
              f"({res['seconds']} s)")
    return 0


def _profile(args) -> int:
    from dataclasses import replace

    from .artifacts import default_dir
    from .engine import Engine
    from .profile import ProfileError, Settings, profile
    from .texts import profile_texts

    try:
        settings = replace(Settings(), context=args.context, queries=args.queries, positions=args.positions,
                           quant_positions=args.quant_positions)
        settings.check(8192)
        texts = json.loads(open(args.texts, encoding="utf-8").read()) if args.texts else profile_texts()
    except (ProfileError, OSError, ValueError) as e:
        return _fail(str(e), 2)
    from .host.native import NativeHost
    engine = Engine(NativeHost(args.artifacts or default_dir(), simd=not args.scalar, threads=args.threads))

    def show(ev: dict) -> None:
        if not args.json:
            print(f"\r{ev['stage']:<32} {ev['done']}/{ev['total']} runs", end="", file=sys.stderr, flush=True)

    from .store import StoreError

    try:
        res = profile(engine, texts, settings, on_progress=show)
    except (ProfileError, StoreError) as e:  # StoreError: a store call failed (e.g. out of memory)
        return _fail(str(e), 2)
    text = json.dumps(res, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        print(text)
    else:
        print(f"\nprofile of {len(res['texts'])} texts in {res['seconds']} s", file=sys.stderr)
    return 0


def _lesson(args) -> int:
    from . import lesson
    from .artifacts import default_dir
    from .engine import Engine, InputError
    from .policy import parse_policy

    try:
        path = args.lessons or lesson.lessons_file()
        les = lesson.find(json.loads(open(path, encoding="utf-8").read()).get("lessons", []), args.id)
        for r in les["runs"]:
            parse_policy(r["policy"])
    except (InputError, PolicyError) as e:  # before ValueError: both are ValueErrors
        return _fail(str(e), 2)
    except (OSError, ValueError) as e:
        return _fail(f"cannot read the lessons {path}: {e}", 2)
    from .host.native import NativeHost
    engine = Engine(NativeHost(args.artifacts or default_dir(), simd=not args.scalar, threads=args.threads),
                    profile=_head_profile(args))
    res = {"id": les["id"]} | lesson.run(engine, les["item"], [r["policy"] for r in les["runs"]])
    if args.json:
        print(json.dumps(res))
    else:
        it = res["item"]
        print(f"{it['task']} at {it['tokens']} tokens: {it['key']} = {it['code']}")
        for r, spec in zip(res["runs"], les["runs"]):
            asked = next(f for f in r["facts"] if f["asked"])
            print(f"{spec['label']}: {r['digits'] or '-'} ({'right' if r['correct'] else 'crossover' if r['crossover'] else 'wrong'}), "
                  f"code kept exactly by {asked['kept']:.0%} of KV heads, {r['ratio_vs_fp32']:.1f}x smaller")
    return 0


def _observe(args) -> int:
    from .observe import observations

    try:
        prof = json.loads(open(args.profile, encoding="utf-8").read())
        res = observations(prof)
    except (OSError, ValueError, KeyError) as e:
        return _fail(f"cannot read the profile {args.profile}: {e}", 2)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for o in res["observations"]:
            print(f"{o['title']}: {o['sentence']}")
    return 0

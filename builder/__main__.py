"""``python -m builder COMMAND``: build the artifacts, the site, and serve it.

  model      GGUF → ONNX graph with the KV cache outside it (+ config.json)
  tokenizer  GGUF → tokenizer.json
  wasm       C → kvstore.wasm (SIMD) and kvstore-scalar.wasm
  all        the three above, bundled and checked (manifest.json), made the active build
  profile    all, then the head profile and the four observations (kvlab.profile, natively)
  site       all, then render dist/
  serve      serve dist/ on 127.0.0.1 (with the headers onnxruntime-web's threads need);
             --room serves every laptop on this network and prints the address to open
  pack       dist/ as one zip (kvcache-lab-site.zip) for a static host or a USB stick
"""

from __future__ import annotations

import argparse
import sys
import time


def build_all(force: bool = False):
    from .bundle import make_bundle
    from .model import build_model
    from .tokenizer_data import build_tokenizer
    from .wasm import build_wasm

    t0 = time.perf_counter()
    builds = {
        "model": build_model(force=force),
        "tokenizer": build_tokenizer(force=force),
        "wasm": build_wasm(force=force),
    }
    bundle = make_bundle(builds)
    print(f"builder: artifacts ready in {bundle} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return bundle


def parser() -> argparse.ArgumentParser:
    from .serve import add_arguments

    ap = argparse.ArgumentParser(prog="python -m builder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["model", "tokenizer", "wasm", "all", "profile", "site", "serve", "pack"])
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has it")
    add_arguments(ap)
    ap.add_argument("--out", metavar="FILE", help="pack: the archive to write (default kvcache-lab-site.zip)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    if args.command == "model":
        from .model import build_model
        print(build_model(force=args.force))
    elif args.command == "tokenizer":
        from .tokenizer_data import build_tokenizer
        print(build_tokenizer(force=args.force))
    elif args.command == "wasm":
        from .wasm import build_wasm
        print(build_wasm(force=args.force))
    elif args.command == "all":
        build_all(force=args.force)
    elif args.command == "profile":
        from .profile import build_profile
        print(build_profile(build_all(), force=args.force))
    elif args.command == "site":
        from .site import build_site
        build_site(build_all(force=args.force))
    elif args.command == "serve":
        from .serve import serve
        serve(args.port, isolate=not args.no_isolation, host=args.host)
    elif args.command == "pack":
        from .pack import OUT, pack
        pack(out=args.out or OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

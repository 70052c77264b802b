"""`llmft data download`: fetch the raw datasets from their canonical public locations."""
from __future__ import annotations


def register(sub) -> None:
    from llmft.data.download import BASE_URL_ENV, SOURCE_NAMES

    parser = sub.add_parser(
        "download",
        help="download Alpaca, Self-Instruct, Super-NaturalInstructions and Unnatural Instructions",
        description="Fetch the raw datasets (resumable, size/hash-checked, archives extracted safely) and write "
        "DIR/download_manifest.json.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sources", default=",".join(SOURCE_NAMES),
                        help=f"comma-separated subset of {','.join(SOURCE_NAMES)} (default: all)")
    parser.add_argument("--base-url", default=None,
                        help=f"mirror replacing scheme and host of every URL (env {BASE_URL_ENV})")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the size / git-blob checks against the known upstream files")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait on the network (default 30)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llmft.data.download import download

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    result = download(args.out, sources, base_url=args.base_url, verify_files=not args.no_verify,
                      timeout=args.timeout)
    for entry in result["files"]:
        extracted = ""
        if "extracted_to" in entry:
            extracted = f" -> {entry['extracted_to']}/ ({entry['extracted_files']} files)"
        print(f"{entry['path']}: {entry['bytes']:,} bytes, sha256 {entry['sha256'][:16]}{extracted}")
    print(f"manifest: {result['manifest']}")
    return 0

#!/usr/bin/env python3
"""Writes crates/palisade-server/data/o200k_base.ranks from a tiktoken
`o200k_base.tiktoken` file (one `base64-token rank` per line, ranks 0..N in
order), as tiktoken-rs ships it in its `assets/` folder:

    python3 scripts/o200k-ranks.py ~/.cargo/registry/src/*/tiktoken-rs-0.7.0/assets/o200k_base.tiktoken

The output is each token's length (one byte) followed by its bytes, in rank
order: 1.6 MB instead of 3.6 MB, and read without decoding. The ranks are
OpenAI's (MIT licence, github.com/openai/tiktoken); the unit tests in
crates/palisade-server/src/tokens.rs hold counts made with them equal to
tiktoken-rs's.
"""

import base64
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "crates" / "palisade-server" / "data" / "o200k_base.ranks"

out = bytearray()
for expected, line in enumerate(Path(sys.argv[1]).read_text().splitlines()):
    token, rank = line.split()
    if int(rank) != expected:
        sys.exit(f"rank {rank} out of order at line {expected + 1}")
    b = base64.b64decode(token)
    if not 0 < len(b) < 256:
        sys.exit(f"token {rank} is {len(b)} bytes")
    out.append(len(b))
    out += b
OUT.write_bytes(bytes(out))
print(f"{OUT}: {expected + 1} tokens, {len(out)} bytes")

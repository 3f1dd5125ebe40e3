"""The AI-gateway secrets' key, from the command line (scripts/restore uses it).

    kek status                       how many gateway secrets this stack's passphrase opens
    kek rewrap OLD_PASSPHRASE_FILE   rewrap the secrets another stack stored (a restored
                                     backup) under this stack's passphrase

Prints one JSON line: {"fingerprint", "readable", "rewrapped", "unreadable"}.
Exits 1 if any secret stays unreadable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stack_ops.common import Settings, StackError, die, read_secret
from stack_ops.gateway_keys import fingerprint, rewrap

JOB = "kek"


def main(argv: list[str]) -> int:
    if argv not in (["status"],) and not (len(argv) == 2 and argv[0] == "rewrap"):
        return die(JOB, "usage: kek status | kek rewrap OLD_PASSPHRASE_FILE")
    try:
        passphrase = read_secret("kek_passphrase")
        old = [Path(argv[1]).read_text().strip()] if argv[0] == "rewrap" else []
        report = rewrap(Settings.from_env().tracking_uri(), passphrase, old, apply=argv[0] == "rewrap")
    except (StackError, OSError) as e:
        return die(JOB, str(e))
    print(
        json.dumps(
            {
                "fingerprint": fingerprint(passphrase),
                "readable": report.readable,
                "rewrapped": report.rewrapped,
                "unreadable": report.unreadable,
            }
        )
    )
    return 1 if report.unreadable else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

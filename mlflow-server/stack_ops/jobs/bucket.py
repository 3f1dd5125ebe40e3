"""Create the artifact bucket if it does not exist (idempotent)."""

from __future__ import annotations

import sys
import time

from stack_ops.common import Settings, StackError, die, env, log

JOB = "bucket"


def main() -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    settings = Settings.from_env()
    timeout = float(env("STACK_WAIT_SECONDS", "60"))
    try:
        s3 = settings.s3_client()
    except StackError as e:
        return die(JOB, str(e))

    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        try:
            s3.head_bucket(Bucket=settings.bucket)
            log(JOB, f"bucket {settings.bucket!r} exists at {settings.s3_endpoint}")
            return 0
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                s3.create_bucket(Bucket=settings.bucket)
                log(JOB, f"created bucket {settings.bucket!r} at {settings.s3_endpoint}")
                return 0
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return die(JOB, f"the S3 store refused our credentials ({code})")
            problem = f"S3 error {code}"
        except BotoCoreError as e:
            problem = str(e)
        if elapsed > timeout:
            return die(JOB, f"S3 store at {settings.s3_endpoint} not usable after {timeout:.0f}s: {problem}")
        log(JOB, f"waiting for the S3 store ({elapsed:.0f}s / {timeout:.0f}s): {problem}")
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())

"""Create the artifact bucket if it does not exist (idempotent)."""

from __future__ import annotations

import sys
import time

from stack_ops.common import Settings, StackError, die, env, log

JOB = "bucket"


def create_args(bucket: str, region: str) -> dict:
    """create_bucket's arguments: outside us-east-1, S3 wants the region named."""
    args: dict = {"Bucket": bucket}
    if region and region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    return args


def create(s3, settings) -> int:
    """Only when head_bucket said it is missing: an existing bucket needs no
    permission to create buckets (a managed store's scoped credentials)."""
    from botocore.exceptions import ClientError

    try:
        s3.create_bucket(**create_args(settings.bucket, s3.meta.region_name))
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        return die(
            JOB,
            f"bucket {settings.bucket!r} does not exist at {settings.s3_endpoint} and creating it failed ({code}): "
            "create it with your provider's tools, or give these credentials the right to create it",
        )
    log(JOB, f"created bucket {settings.bucket!r} at {settings.s3_endpoint}")
    return 0


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
                return create(s3, settings)
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

"""The key that protects MLflow's stored AI-gateway secrets (provider API keys).

MLflow encrypts each gateway secret with its own data key (DEK) and wraps
that key with a key-encryption key (KEK) derived from
MLFLOW_CRYPTO_KEK_PASSPHRASE (mlflow/utils/crypto.py). Unset, MLflow falls
back to a passphrase written in its own source, so anyone holding a database
backup could decrypt every key. The stack generates its own passphrase (the
`kek_passphrase` secret) and gives it to the server.

This module, shared by the `migrate` job and the `kek` command, moves wrapped
DEKs from one passphrase to another with MLflow's own functions
(`rotate_secret_encryption`: the DEK is unwrapped with the old KEK and
rewrapped with the new one; the ciphertext itself never changes). The KEK
version (MLflow's MLFLOW_CRYPTO_KEK_VERSION, default 1) is kept: only the
passphrase changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def fingerprint(passphrase: str) -> str:
    """A short public identifier of a passphrase (recorded in backups)."""
    return hashlib.sha256(f"mlflow-stack-kek:{passphrase}".encode()).hexdigest()[:16]


@dataclass
class Report:
    readable: int = 0  # already under the wanted passphrase
    rewrapped: int = 0  # moved from another passphrase
    unreadable: list[str] = field(default_factory=list)  # secret names no passphrase given opens


def _opens(secret, kek: bytes) -> bool:
    from mlflow.utils.crypto import unwrap_dek

    try:
        unwrap_dek(secret.wrapped_dek, kek)
    except Exception:
        return False
    return True


def rewrap(tracking_uri: str, passphrase: str, old_passphrases: list[str], apply: bool = True) -> Report:
    """Every gateway secret wrapped under one of `old_passphrases` is rewrapped
    under `passphrase`, in one transaction; nothing is changed if any secret
    fails. With apply=False, only report."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlGatewaySecret
    from mlflow.utils.crypto import KEKManager, rotate_secret_encryption
    from sqlalchemy.orm import Session

    report = Report()
    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        if not sqlalchemy.inspect(engine).has_table(SqlGatewaySecret.__tablename__):
            return report
        with Session(engine) as session:
            for secret in session.query(SqlGatewaySecret).all():
                version = secret.kek_version or 1
                new = KEKManager(passphrase=passphrase, kek_version=version)
                if _opens(secret, new.get_kek()):
                    report.readable += 1
                    continue
                old = next(
                    (
                        m
                        for m in (KEKManager(passphrase=p, kek_version=version) for p in old_passphrases)
                        if _opens(secret, m.get_kek())
                    ),
                    None,
                )
                if old is None:
                    report.unreadable.append(secret.secret_name)
                    continue
                if apply:
                    secret.wrapped_dek = rotate_secret_encryption(
                        secret.encrypted_value, secret.wrapped_dek, old, new
                    ).wrapped_dek
                report.rewrapped += 1
            if apply and report.rewrapped:
                session.commit()
            else:
                session.rollback()
    finally:
        engine.dispose()
    return report


def mlflow_default_passphrase() -> str:
    from mlflow.utils.crypto import DEFAULT_KEK_PASSPHRASE

    return DEFAULT_KEK_PASSPHRASE

"""One-shot provisioning jobs (secrets, bucket, migrate, accounts, tls) and the periodic gc."""

"""Operator commands run on demand: accounts (scripts/users), bucket copies (scripts/backup|restore)."""

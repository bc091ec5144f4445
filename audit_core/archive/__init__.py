"""The S3 archive of the ledger: segments of records, signed digests chained per
tenant, written under Object Lock by a sink follower; verified and restored from S3
alone. The manual is ``docs/archive.md``."""

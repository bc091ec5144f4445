"""Errors of the S3 archive. ``api/`` maps them to exit codes and HTTP statuses.

ArchiveError
├── ArchiveConfigError     the settings cannot work (bucket name, lock mode, KMS key)
├── BucketProblemError     the bucket exists but is not fit to hold evidence; lists why
├── ArchiveUnavailableError S3 cannot be reached or refuses the archiver's requests
├── ArchiveFormatError     an object of the archive is not what its key says it is
└── RestoreError           a restore was refused (database not empty) or did not match
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every error the archive raises on purpose."""


class ArchiveConfigError(ArchiveError):
    pass


class BucketProblemError(ArchiveError):
    def __init__(self, bucket: str, problems: list[str]):
        self.bucket = bucket
        self.problems = problems
        super().__init__(f"bucket {bucket!r} is not fit for the archive: " + "; ".join(problems))


class ArchiveUnavailableError(ArchiveError):
    pass


class ArchiveFormatError(ArchiveError):
    pass


class RestoreError(ArchiveError):
    pass

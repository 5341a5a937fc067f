"""The one S3 adapter of the transfer engine: every call to S3's API is made in this package.

``client`` (which client, which key), ``checksums`` (how a body is verified), ``upload`` (the
part-wise, resumable upload), ``objects`` (HEAD, delete, list, abort, open uploads) and
``errors`` (botocore's errors as transient or permanent transfer errors). Modules outside the
engine use :mod:`queued_storage.transfer`, never this package.
"""

"""A tus client in a process of its own (``python -m tests.tus_client``), for the fault tests
that kill the client with SIGKILL in the middle of a chunk.

It uploads *file* to the tus endpoint with tuspy, in chunks with a sha1 ``Upload-Checksum``,
as a client application would: the upload URL it creates is stored in *url_file* (written
whole, then renamed into place) before the first chunk, and a URL found there is resumed
instead (tuspy asks the server for the offset with ``HEAD``). The test reads the stored URL
to resume the upload with a fresh client after the kill.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tusclient.client import TusClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tus_client")
    parser.add_argument("--endpoint", required=True, help="the tus endpoint (creation) URL")
    parser.add_argument("--cookie", default="", help="the Cookie header to send")
    parser.add_argument("--file", required=True, type=Path)
    parser.add_argument("--name", required=True, help="the file name (Upload-Metadata)")
    parser.add_argument("--url-file", required=True, type=Path, help="where the URL is kept")
    parser.add_argument("--chunk-size", type=int, required=True)
    args = parser.parse_args(argv)

    stored = args.url_file.read_text() if args.url_file.exists() else None
    client = TusClient(args.endpoint, headers={"Cookie": args.cookie})
    with args.file.open("rb") as stream:
        uploader = client.uploader(
            file_stream=stream,
            url=stored,
            chunk_size=args.chunk_size,
            metadata={"filename": args.name},
            upload_checksum=True,
        )
        if stored is None:
            url = uploader.create_url()
            uploader.set_url(url)
            fresh = args.url_file.with_suffix(".new")
            fresh.write_text(url)
            os.replace(fresh, args.url_file)
        print(f"uploading {uploader.url} from offset {uploader.offset}", flush=True)
        uploader.upload()
        print(f"finished at offset {uploader.offset}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

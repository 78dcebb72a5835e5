#!/usr/bin/env python
"""Fetch one source distribution from the package index pip is set up to use, by file name.

    python scripts/fetch_sdist.py NAME VERSION DIR

For sdists that ``pip download NAME==VERSION`` cannot fetch: ncnn's setup.py names its version
after the day it runs, so pip's metadata check rejects every ncnn sdist ("inconsistent
version"). This reads the index's simple page for NAME (PEP 503; the index URL pip is configured
with: $PIP_INDEX_URL, else ``pip config``, else pip's default) and downloads the link named
NAME-VERSION.tar.gz into DIR. The caller checks its sha256 (scripts/build_device.sh pins it).
"""
from __future__ import annotations

import html.parser
import os
import subprocess
import sys
import urllib.parse
import urllib.request


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def index_url() -> str:
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    if got.returncode == 0 and got.stdout.strip():
        return got.stdout.strip()
    from pip._internal.models.index import PyPI  # noqa: PLC0415  (pip's own default index)
    return PyPI.simple_url


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    name, version, dest = argv
    wanted = f"{name}-{version}.tar.gz"
    page = urllib.parse.urljoin(index_url().rstrip("/") + "/", f"{name}/")
    with urllib.request.urlopen(page, timeout=60) as resp:
        parser = Links()
        parser.feed(resp.read().decode("utf-8", "replace"))
    links = [urllib.parse.urljoin(page, h) for h in parser.hrefs]
    match = [u for u in links if urllib.parse.urlparse(u).path.rsplit("/", 1)[-1] == wanted]
    if not match:
        print(f"fetch_sdist: {wanted} is not on the index's page for {name}", file=sys.stderr)
        return 1
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, wanted)
    with urllib.request.urlopen(match[0].split("#")[0], timeout=300) as resp, open(target + ".part", "wb") as fh:
        while chunk := resp.read(1 << 20):
            fh.write(chunk)
    os.replace(target + ".part", target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

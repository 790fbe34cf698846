"""Links from the Prefect UI's artifacts to the run's files: a folder in S3 or Google Cloud Storage opens in its
cloud console; elsewhere (a local folder, an S3-compatible server of its own) the URI is shown as text to copy, since
no browser page lists it."""

from __future__ import annotations

from urllib.parse import quote

from finescope_core import storage

CONSOLES = {
    "s3": "https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={key}/",
    "gs": "https://console.cloud.google.com/storage/browser/{bucket}/{key}",
    "gcs": "https://console.cloud.google.com/storage/browser/{bucket}/{key}",
}


def console_url(uri: str) -> str | None:
    """The cloud console page that lists the folder ``uri`` (None: none known)."""
    protocol, _, path = uri.partition("://")
    if protocol not in CONSOLES or not path:
        return None
    if protocol == "s3" and (storage.configured("s3") or storage.s3_options_from_env()):
        return None  # an S3-compatible server of its own: AWS's console does not show it
    bucket, _, key = path.strip("/").partition("/")
    return CONSOLES[protocol].format(bucket=quote(bucket), key=quote(key))


def markdown_link(uri: str | None) -> str:
    """``uri`` as Markdown: a link to its console page where there is one, code text otherwise."""
    if not uri:
        return "n/a"
    url = console_url(uri)
    return f"[`{uri}`]({url})" if url else f"`{uri}`"

"""Links from the UI's report to the run's files: cloud folders open in their console; the rest stay copyable text."""

import pytest
from finescope.tasks.links import console_url, markdown_link


@pytest.fixture
def aws(monkeypatch):
    for name in ("FINESCOPE_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def test_an_s3_folder_links_to_its_listing_in_the_aws_console(aws):
    assert console_url("s3://team-models/runs/med/recovered/ab12") == (
        "https://s3.console.aws.amazon.com/s3/buckets/team-models?prefix=runs/med/recovered/ab12/")
    assert markdown_link("s3://b/a b") == "[`s3://b/a b`](https://s3.console.aws.amazon.com/s3/buckets/b?prefix=a%20b/)"
    assert console_url("gs://bucket/runs/x") == "https://console.cloud.google.com/storage/browser/bucket/runs/x"


def test_folders_no_console_shows_stay_text(aws, monkeypatch):
    assert markdown_link("/data/runs/med/eval/1f") == "`/data/runs/med/eval/1f`"
    assert markdown_link(None) == "n/a"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")  # MinIO, moto: not in AWS's console
    assert console_url("s3://team-models/runs") is None
    assert markdown_link("s3://team-models/runs") == "`s3://team-models/runs`"

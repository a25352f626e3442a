from __future__ import annotations

import os

from tests.support.azurite import Azurite
from tests.support.loopfs import loop_filesystem


def test_azurite_serves_page_blobs_through_sas(azurite: Azurite) -> None:
    from azure.storage.blob import BlobClient

    container = azurite.container()
    url = azurite.create_page_blob(container, "disk0.vhd")
    props = BlobClient.from_blob_url(url).get_blob_properties()
    assert props.blob_type == "PageBlob"
    assert props.size == 1024 * 1024


def test_loop_filesystem_is_really_mounted() -> None:
    for fstype in ("ext4", "xfs"):
        with loop_filesystem(fstype) as fs:
            probe = os.path.join(fs.mountpoint, "probe")
            with open(probe, "w") as fh:
                fh.write("ok")
            with open("/proc/self/mountinfo") as fh:
                assert any(f" {fs.mountpoint} " in line and f" - {fstype} " in line for line in fh)

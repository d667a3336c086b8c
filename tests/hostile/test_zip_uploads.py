"""Hostile training uploads: each fails only its own training, fast, with a sentence saying what is wrong,
writes nothing outside the service's own folders, and the next prediction succeeds."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from service_harness import progress_steps

from . import zips
from .conftest import TRAIN, Footprint, data_uri, still_serves, timed

MARK = uuid.uuid4().hex[:12]  # names of the traversal targets: found nowhere afterwards
CASES = {
    "not a zip": (b"GIF89a this is not a zip", r"not a readable \.zip file"),
    "empty file": (b"", r"The uploaded file is empty"),
    "empty zip": (zips.make({}), r"at least 3 images .*found 0 usable"),
    "encrypted": (zips.encrypted(), r"password-protected"),
    "zip bomb: small file, huge declared size": (
        zips.declares_huge_member(),
        r"3815 MB uncompressed; the limit "
        r"per file is 100 MB",
    ),
    "zip bomb: members adding up past 1 GB": (
        zips.declares_huge_total(),
        r"holds 1140 MB uncompressed; the limit "
        r"is 1024 MB",
    ),
    "zip bomb: high-ratio member": (zips.high_ratio_member(), r"'zeros.png' decompresses \d+x \(a zip bomb\?\)"),
    "member lying about its size": (zips.lies_small(), r"corrupt"),
    "more entries than the limit": (zips.many_entries(501), r"501 entries; the limit is 500"),
    "../ path": ({**zips.three_images(), f"../../../../tmp/escape-{MARK}.png": zips.png()}, r"unsafe path"),
    "absolute path": ({**zips.three_images(), f"/tmp/absolute-{MARK}.png": zips.png()}, r"unsafe path"),
    "windows drive path": ({**zips.three_images(), f"C:\\escape-{MARK}.png": zips.png()}, r"unsafe path"),
    "symlink entry": (
        {**zips.three_images(), f"link-{MARK}.png": zips.symlink_entry(f"link-{MARK}.png")},
        r"symbolic link",
    ),
    "nested zip": ({**zips.three_images(), "more.zip": zips.make(zips.three_images())}, r"another archive"),
    "decompression-bomb PNG": (
        {**zips.three_images(), "bomb.png": zips.declared_png(30000, 30000)},
        r"'bomb.png' declares an enormous image \(900 megapixels\); the limit is 50",
    ),
    "500-megapixel image": ({**zips.three_images(), "huge.png": zips.declared_png(25000, 20000)}, r"500 megapixels"),
    "60-megapixel image": (
        {**zips.three_images(), "big.png": zips.declared_png(8000, 7500)},
        r"'big.png' is 8000x7500 \(60 megapixels\); the limit is 50 megapixels",
    ),
    "truncated JPEG": (zips.truncated_jpeg(), r"at least 3 images .*found 2 usable image\(s\), skipped 1"),
    "0-byte images": (
        {**zips.two_images(), "empty.png": b"", "empty.jpg": b""},
        r"found 2 usable image\(s\), skipped 2",
    ),
    "only non-images": (
        {"notes.txt": b"hello", "doc.pdf": b"%PDF-1.4", "run.sh": b"rm -rf /"},
        r"at least 3 images \(jpg, png or webp\); found 0 usable",
    ),
    "fewer than 3 images": (zips.two_images(), r"at least 3 images .*found 2 usable"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_zip_fails_its_own_training_fast_and_leaves_nothing(hardened, alice, case):
    content, message = CASES[case]
    raw = content if isinstance(content, bytes) else zips.make(content)
    footprint = Footprint(hardened)
    result, seconds = timed(alice, TRAIN, {"instance_data": data_uri(raw), "task": "object", "seed": 0})
    assert result["status"] == "failed", result
    assert result["error"].startswith("DatasetError: "), result["error"]
    assert re.search(message, result["error"]), result["error"]
    assert seconds < 10, f"{case} took {seconds:.1f}s"
    assert not progress_steps(result["logs"])  # refused before any training step
    assert footprint.strays() == []
    assert not _found_anywhere(MARK, hardened.data_dir)
    still_serves(alice, hardened.files)


def test_skipped_files_are_named_in_the_logs(alice):
    result, _ = timed(alice, TRAIN, {"instance_data": data_uri(zips.truncated_jpeg()), "task": "object"})
    assert "skipped truncated.jpg: not a readable image" in result["logs"], result["logs"]


def _found_anywhere(mark: str, data_dir: Path) -> list[Path]:
    """Files named with ``mark`` where the traversal entries point (/tmp, /), anywhere under the service's data
    folder (its TMPDIR and its workers' folders included), or beside the code the workers run."""
    shallow = [Path("/tmp"), Path("/"), Path.cwd(), Path.home(), data_dir.parent]
    found = [p for root in shallow for p in root.glob(f"*{mark}*")]
    return found + [p for p in data_dir.rglob(f"*{mark}*")]

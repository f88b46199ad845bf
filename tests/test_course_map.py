"""docs/teaching.md's course map agrees with the lessons: each lesson's time equals the one in its
notebook's opening, and the course total stated under the table is their sum."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "notebooks" / "for_instructors" / "scripts"
TEACHING = ROOT / "docs" / "teaching.md"

# A row of the map: | 04 | `04_attention` | 60-75 min | ...
ROW = re.compile(r"^\| (\d\d) \| `(\w+)` \| (\d+)(?:-(\d+))? min \|", re.MULTILINE)
# A notebook's opening: **Time:** about 45 minutes ... or **Time:** 60 to 90 minutes ...
OPENING = re.compile(r"\*\*Time:\*\* (?:about (\d+)|(\d+) to (\d+)) minutes")
TOTAL = re.compile(r"All together (\d+) h (\d+) min to (\d+) h (\d+) min of lessons")


def opening_minutes(script: Path) -> tuple[int, int]:
    found = OPENING.search(script.read_text())
    assert found, f"{script.name}: no '**Time:** about N minutes' (or 'N to M minutes') in its opening"
    if found.group(1):
        return int(found.group(1)), int(found.group(1))
    return int(found.group(2)), int(found.group(3))


def test_course_map_times_match_the_notebooks_and_add_up():
    text = TEACHING.read_text()
    rows = ROW.findall(text)
    lessons = sorted(path.stem for path in SCRIPTS.glob("[0-9][0-9]_*.py"))
    assert [name for _, name, _, _ in rows] == lessons, "the course map lists every lesson once, in order"
    low = high = 0
    for number, name, shortest, longest in rows:
        mapped = (int(shortest), int(longest or shortest))
        assert name.startswith(number)
        assert mapped == opening_minutes(SCRIPTS / f"{name}.py"), f"{name}: map {mapped}, notebook differs"
        low, high = low + mapped[0], high + mapped[1]
    total = TOTAL.search(text)
    assert total, "teaching.md states the course total as 'All together H h M min to H h M min of lessons'"
    stated = (int(total.group(1)) * 60 + int(total.group(2)), int(total.group(3)) * 60 + int(total.group(4)))
    assert stated == (low, high), f"the total says {stated} minutes; the lessons add up to {(low, high)}"

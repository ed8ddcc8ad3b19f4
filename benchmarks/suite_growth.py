"""Compare two test-suite runs by their pytest junit XML: the tests both runs have (same module and name), and
what the newer run adds.

    python benchmarks/suite_growth.py OLD.xml NEW.xml
    (each from `PYTEST_ADDOPTS=--junitxml=X.xml make test`, e.g. at an older commit and now, on the same machine)

Prints totals in minutes and the added tests' time per module, so "is the suite slower?" separates the same tests
from new ones.
"""
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def test_times(path: str) -> dict[tuple[str, str], float]:
    return {(tc.get("classname"), tc.get("name")): float(tc.get("time") or 0)
            for tc in ET.parse(path).getroot().iter("testcase")}


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    old, new = test_times(sys.argv[1]), test_times(sys.argv[2])
    both = old.keys() & new.keys()
    added = new.keys() - old.keys()
    minutes = lambda times, keys: sum(times[k] for k in keys) / 60  # noqa: E731
    print(f"old: {len(old)} tests, {minutes(old, old):.1f} min; new: {len(new)} tests, {minutes(new, new):.1f} min")
    print(f"in both: {len(both)} tests, {minutes(old, both):.1f} min then, {minutes(new, both):.1f} min now")
    print(f"only old: {len(old.keys() - new.keys())}; added: {len(added)} tests, {minutes(new, added):.1f} min")
    per_module = Counter()
    for key in added:
        per_module[key[0]] += new[key]
    for module, seconds in per_module.most_common(12):
        print(f"  added in {module}: {seconds:.0f} s")


if __name__ == "__main__":
    main()

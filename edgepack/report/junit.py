"""JUnit XML for CI test tabs: one test case per bundle (missing ones included).

failed -> <failure> with every line; deferred -> <skipped> with the reason (it is
checked on the device, not here); notes -> <system-out>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from edgepack.errors import Status
from edgepack.report.gate import Verdict


def junit_xml(verdicts: Sequence[Verdict], suite: str = "edgepack validate") -> str:
    failures = sum(v.status == Status.FAILED for v in verdicts)
    skipped = sum(v.status == Status.DEFERRED for v in verdicts)
    root = ET.Element("testsuites", name="edgepack", tests=str(len(verdicts)),
                      failures=str(failures), errors="0", skipped=str(skipped))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(verdicts)),
                       failures=str(failures), errors="0", skipped=str(skipped))
    for v in verdicts:
        case = ET.SubElement(ts, "testcase", classname=f"edgepack.{v.target}", name=v.name)
        if v.status == Status.FAILED:
            lines = v.lines or [f"{v.name}: failed"]
            fail = ET.SubElement(case, "failure", message=lines[0], type="edgepack")
            fail.text = "\n".join(lines)
        elif v.status == Status.DEFERRED:
            reason = (v.new.reason if v.new is not None else None) or "checked on the device"
            ET.SubElement(case, "skipped", message=f"deferred: {reason}")
        if v.notes:
            ET.SubElement(case, "system-out").text = "\n".join(v.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"

"""The server's /metrics, scraped and parsed: the exposition format is asserted on the way, and a
sample is found by name and labels."""

import http.client
import re


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|\+Inf|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        assert m, f"bad label syntax at {text[pos:]!r} in {{{text}}}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {{{text}}}"
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def parse_exposition(text):
    """-> {family: {"type": t, "help": h, "samples": [(name, labels, value)]}}; asserts the format."""
    families, current = {}, None
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_ = line[7:].split(" ", 1)
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, typ = line[7:].split(" ")
            assert name == current and families[name]["type"] is None, f"TYPE {name} not right after its HELP"
            assert typ in ("counter", "gauge", "histogram"), typ
            families[name]["type"] = typ
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), parse_labels(m.group(3) or ""), float(m.group(4))
            base = re.sub(r"_(bucket|sum|count)$", "", name) if families.get(current, {}).get("type") == "histogram" else name
            assert base == current, f"sample {name} outside its family (current {current})"
            families[current]["samples"].append((name, labels, value))
    return families


def scrape(s):
    conn = http.client.HTTPConnection("127.0.0.1", s.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        assert r.getheader("Content-Type").startswith("text/plain; version=0.0.4"), r.getheader("Content-Type")
        return parse_exposition(body)
    finally:
        conn.close()


def total(fams, name, **want):
    """Sum of the family's samples named `name` whose labels include `want` (over every worker)."""
    fam = fams[re.sub(r"_(bucket|sum|count)$", "", name)] if name not in fams else fams[name]
    return sum(v for n, labels, v in fam["samples"]
               if n == name and all(labels.get(k) == str(val) for k, val in want.items()))


def value(fams, name, **want):
    vals = [v for n, labels, v in fams[name]["samples"] if all(labels.get(k) == str(val) for k, val in want.items())]
    assert len(vals) == 1, f"expected one {name}{want}, got {vals}"
    return vals[0]

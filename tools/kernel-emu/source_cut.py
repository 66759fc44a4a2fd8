"""Cutting kernel source by braces, shared by extract_dense.py and extract_message.py."""


def through_body(text, start, what, fail):
    """Index just past the closing brace of the first braced body at or after `start`; `fail`
    (which does not return) is called with a message where there is none or it is unbalanced."""
    open_at = text.find("{", start)
    if open_at < 0:
        fail(f"no body for {what}")
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    fail(f"unbalanced braces in {what}")

"""The docs page: the OpenAPI document rendered as one self-contained HTML page (no script, no
CDN), so an operator can read the API from the server itself."""

from __future__ import annotations

from html import escape
from typing import Any

METHOD_ORDER = ("get", "post", "put", "delete")


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    rows = []
    for path in sorted(schema.get("paths", {})):
        operations = schema["paths"][path]
        for method in sorted(operations, key=lambda m: METHOD_ORDER.index(m)
                             if m in METHOD_ORDER else len(METHOD_ORDER)):
            op = operations[method]
            schemes = {name for need in op.get("security", ()) for name in need}
            session = "(S)" if "sceau" in schemes else "(O)" if "bearer" in schemes else ""
            codes = ", ".join(sorted(str(c) for c in op.get("responses", {})))
            body = _body_fields(schema, op)
            rows.append(
                f"<tr><td class=m>{escape(method.upper())}</td><td><code>{escape(path)}</code> "
                f"{session}</td><td><b>{escape(op.get('summary', ''))}</b>"
                f"<p>{escape(op.get('description', '')).replace(chr(10), '<br>')}</p>{body}</td>"
                f"<td>{escape(codes)}</td></tr>")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{escape(info.get('title', 'API'))}</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}} td{{border-top:1px solid #ddd;padding:.5rem;vertical-align:top}}
td.m{{font-weight:600;font-family:monospace}} p{{margin:.2rem 0;color:#444}} code{{font-size:14px}}
</style></head><body>
<h1>{escape(info.get('title', 'API'))} <small>{escape(info.get('version', ''))}</small></h1>
<p>{escape(info.get('description', ''))}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).
(S): send a viewer's session token in the <code>X-Sceau-Session</code> header, or an operator's
<code>Authorization: Bearer</code> token. (O): operators only, <code>Authorization: Bearer
&lt;access token&gt;</code> from the deployment's identity provider, with the role the
description names (401 without a token that verifies, 403 without the role).
Every error is JSON: <code>{{"error": code, "detail": sentence}}</code>, 422 adds <code>fields</code>.</p>
<table><tr><th>method</th><th>path</th><th>what</th><th>answers</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _body_fields(schema: dict[str, Any], op: dict[str, Any]) -> str:
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    body = content.get("schema", {})
    if "$ref" in body:
        body = schema.get("components", {}).get("schemas", {}).get(body["$ref"].rsplit("/", 1)[-1], {})
    props = body.get("properties", {})
    if not props:
        return ""
    required = set(body.get("required", ()))
    items = "".join(
        f"<li><code>{escape(name)}</code>{'' if name in required else ' (optional)'}: "
        f"{escape(prop.get('description', ''))}</li>" for name, prop in props.items())
    return f"<p>body:</p><ul>{items}</ul>"

"""What a client sends cannot forge a line of the server's log, nor put its token there.

Our log lines show client values with %r; server/logs.py escapes control characters in
the arguments of every record (uvicorn's too: it logs a WebSocket's path URL-decoded, with its
query string) and masks ?token= values."""

from __future__ import annotations

import uuid

from support.client import Client, aio
from support.raw_ws import RawWebSocket


def forged_lines(log: str, marker: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(marker) or line.startswith(" " + marker)]


@aio
async def test_a_newline_in_a_client_id_content_or_path_forges_no_log_line(make_server):
    server = make_server("sqlite")
    marker = "FORGED-" + uuid.uuid4().hex[:8]
    c = await Client.open(server)
    await c.complete("line one\n" + marker + " INFO server.chat.commit_points: committed user message x",
                     client_id="k\n" + marker + " INFO x")
    await c.close()
    ws = RawWebSocket(server.port, path="/ws%0A" + marker + "%0D%0A" + marker)  # not /ws: refused, and logged
    ws.close()
    with_token = await Client.open(server, token=c.token)  # ?token= in the URL uvicorn logs
    await with_token.close()
    log = server.log_text()
    assert marker in log  # it was logged...
    assert forged_lines(log, marker) == [], forged_lines(log, marker)  # ...but never at the start of a line
    assert c.token not in log

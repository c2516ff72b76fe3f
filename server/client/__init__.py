"""An asyncio client of the chat.v1 protocol that never loses what it sent.

    from server.client import ChatClient

    async with ChatClient("ws://127.0.0.1:8000/ws") as chat:     # no token: open mode mints one
        reply = await chat.send("hello")                          # waits for `done`: a Reply
        async for piece in chat.stream("tell me more"):           # the reply's text, piece by piece
            print(piece, end="")
        messages = await chat.history(reply.conversation_id)      # oldest first: the current branch
        edited = await chat.edit(messages[0], "hello again")      # a sibling of that message
        again = await chat.regenerate(edited)                     # a new reply to the same message
        await chat.select(reply.message_id)                       # back to the first branch

Every message gets a `client_id` (the server's idempotency key). When the socket drops, the client
reconnects with backoff and the same token, sends again what was not acknowledged, and follows
again what was streaming: with `resume` from the last `seq` it has when the server lists the reply
in `ready.replies_in_flight`, else by sending the acknowledged `client_id` again (the server answers
`ack` duplicate, then the stored reply or a freshly generated one). Pieces already given to a
`stream()` are never given twice: deltas of one reply are deduplicated by `seq` (counted by the
client when a server sends none), and of a regenerated reply only the text beyond what was given
is passed on. `Reply.content` is always the stored reply.

Errors are `ChatError`s carrying the contract's code (`invalid`, `too_large`, `not_found`, `busy`,
`rate_limited`, `unavailable`, `internal`) or one of the client's own: `refused` (`Refused`: HTTP
403/429 or close 1008/1013), `connection` (`ConnectionFailed`: no server after the retries),
`timeout` (`ChatTimeout`, also a `TimeoutError`), `closed`. Every wait has a timeout.

Branches: `edit()` sends a message beside one of the user's (same parent), `regenerate()` has a new
reply generated to one (a turn too, with its own `client_id`: resent after a drop, it still makes
exactly one reply), `select()` makes the branch through a message current, `history(leaf=...)`
reads another branch, `tree()` lists every message of every branch (HTTP, with the client's token).

Over HTTP too: `conversations(q=...)` lists the user's conversations (`Conversation`s, a page at a
time; `conversation(id)` gives one), `rename()` and `settings(system_prompt=..., model=...)` change
one (a setting left out stays, None is the server's default; `models()` lists the choices),
`search(q)` finds the user's messages (`SearchHit`s; `search_all()` walks every page), `export()`
gives a conversation as JSON (a dict, every branch) or Markdown (text, the current branch),
`feedback()` rates a reply (`Message.feedback` in history). A `sync=True` client hears
`conversation_updated` events (`event.conversation`).

The names below are the public API; the modules of this package are its inner parts.
"""

from .chat_client import UNCHANGED, ChatClient
from .errors import ChatError, ChatTimeout, ConnectionFailed, Refused
from .results import (
    Conversation,
    ConversationPage,
    Event,
    Feedback,
    HistoryPage,
    Message,
    Models,
    Reply,
    ReplyInFlight,
    SearchHit,
    SearchPage,
    Tree,
    TreeNode,
)
from .stream import ReplyStream

__all__ = [
    "UNCHANGED", "ChatClient", "ChatError", "ChatTimeout", "ConnectionFailed", "Conversation", "ConversationPage",
    "Event", "Feedback", "HistoryPage", "Message", "Models", "Refused", "Reply", "ReplyInFlight", "ReplyStream",
    "SearchHit", "SearchPage", "Tree", "TreeNode",
]

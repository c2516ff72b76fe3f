"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

Streams through the official SDK. Retries only before the first token; once a token has been
sent to the client, a failure ends the reply (a retry would repeat or contradict what was shown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from server.chat.backends.base import BackendError, ModelRequest
from server.chat.backends.context import build_messages
from server.config import Settings

log = logging.getLogger(__name__)

READY_CACHE_S = 5.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class _Retryable(Exception):
    """Failed before the first token, in a way that may pass: try again."""


class OpenAIBackend:
    name = "openai"
    uses_settings = True

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = settings.model
        self.default_model = settings.model
        self.base_url = settings.openai_base_url or DEFAULT_BASE_URL
        self.context_messages = settings.context_messages
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        self._key = key
        # A backstop only: our own first-token and idle timeouts fire first and say which it was.
        read_s = max(settings.llm_first_token_timeout_s, settings.llm_idle_timeout_s) + 2
        self.client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=key or "unused",  # local servers (Ollama, llama.cpp) accept any key
            max_retries=0,  # ours: only before the first token
            timeout=openai.Timeout(read_s, connect=settings.llm_connect_timeout_s),
        )
        self._ready: tuple[float, bool] = (0.0, False)

    async def stream(self, turn: ModelRequest) -> AsyncIterator[str]:
        s = self.settings
        system_prompt = s.system_prompt if turn.system_prompt is None else turn.system_prompt
        messages = build_messages(system_prompt, turn.context, turn.user_message, s.context_chars)
        for attempt in range(s.llm_retries + 1):
            try:
                stream, chunks, first = await self._open(messages, turn)
                break
            except _Retryable as e:
                if attempt == s.llm_retries:
                    raise BackendError(str(e)) from None
                delay = 0.5 * 2**attempt
                log.info("model backend: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout(s.llm_idle_timeout_s):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise BackendError(f"the model sent nothing for {s.llm_idle_timeout_s:g} s mid-reply "
                                       "(CHAT_LLM_IDLE_TIMEOUT_S)") from None
                except openai.APIError as e:
                    self._log_failure("failed mid-reply", e)
                    raise BackendError(f"the model backend failed mid-reply: {self._describe(e)}") from None
                except Exception as e:  # a connection dropped mid-body surfaces as the HTTP library's own
                    self._log_failure("broke mid-reply", e)
                    raise BackendError("the connection to the model backend broke mid-reply") from None
                piece = self._take(chunk, turn)
                if piece:
                    yield piece
        finally:
            await stream.close()  # closes the HTTP response: the backend stops generating

    async def _open(self, messages: list[dict[str, str]], turn: ModelRequest) -> tuple[Any, Any, str]:
        """Start a completion and read up to its first piece of text."""
        s = self.settings
        stream = None
        try:
            async with asyncio.timeout(s.llm_first_token_timeout_s):
                stream = await self.client.chat.completions.create(
                    model=turn.model or self.model, messages=cast("list[ChatCompletionMessageParam]", messages),
                    stream=True,
                    stream_options={"include_usage": True})
                chunks = aiter(stream)
                async for chunk in chunks:
                    piece = self._take(chunk, turn)
                    if piece:
                        return stream, chunks, piece
            raise _Retryable("the model backend ended the reply before its first token")
        except TimeoutError:
            await self._close(stream)
            raise _Retryable(f"the model sent no token within {s.llm_first_token_timeout_s:g} s "
                             "(CHAT_LLM_FIRST_TOKEN_TIMEOUT_S)") from None
        except openai.APIConnectionError as e:
            await self._close(stream)
            self._log_failure("unreachable", e)
            raise _Retryable("model backend unreachable: check OPENAI_BASE_URL (the address is in the "
                             "server's log)") from None
        except openai.APIStatusError as e:
            await self._close(stream)
            if e.status_code == 429 or e.status_code >= 500:
                raise _Retryable(self._describe(e)) from None
            raise BackendError(self._describe(e)) from None
        except _Retryable:
            await self._close(stream)
            raise
        except BaseException:
            await self._close(stream)
            raise

    def _take(self, chunk: Any, turn: ModelRequest) -> str:
        """The text in one chunk; records the model and, from the final chunk, the token usage."""
        if getattr(chunk, "model", None):
            turn.stats.model = chunk.model
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            turn.stats.prompt_tokens = usage.prompt_tokens
            turn.stats.completion_tokens = usage.completion_tokens
        if not chunk.choices:
            return ""
        return chunk.choices[0].delta.content or ""

    def _describe(self, e: openai.APIError) -> str:
        if isinstance(e, openai.APIStatusError):
            hints = {
                401: "check OPENAI_API_KEY",
                403: f"the API key may not use model {self.model!r}",
                404: f"check CHAT_MODEL ({self.model!r}) and OPENAI_BASE_URL",
                429: "rate limited or out of quota",
            }
            hint = hints.get(e.status_code) or ("the model server failed" if e.status_code >= 500 else "")
            text = f"backend answered {e.status_code}" + (f": {hint}" if hint else "")
        else:
            text = type(e).__name__
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _log_failure(self, what: str, e: BaseException) -> None:
        # The detail (the backend's address, the HTTP library's error) is for the operator; a
        # reply's `error` reaches the client, and names no internal address or credentials.
        log.warning("model backend at %s %s: %s", _without_credentials(self.base_url), what,
                    self._redact(f"{type(e).__name__}: {e}"))

    @staticmethod
    async def _close(stream: Any) -> None:
        if stream is not None:
            await stream.close()

    async def list_models(self) -> list[str]:
        try:
            page = await self.client.models.list(timeout=self.settings.llm_connect_timeout_s)
        except openai.APIError as e:
            self._log_failure("did not list its models", e)
            raise BackendError(f"the model backend did not list its models: {self._describe(e)}") from None
        return [m.id for m in page.data if isinstance(getattr(m, "id", None), str)]

    async def complete(self, messages: list[dict[str, str]], *, model: str | None, max_tokens: int,
                       timeout_s: float) -> str | None:
        try:
            answer = await self.client.chat.completions.create(
                model=model or self.model, messages=cast("list[ChatCompletionMessageParam]", messages),
                max_tokens=max_tokens, stream=False, timeout=timeout_s)
        except openai.APIError as e:
            self._log_failure("did not answer a short request", e)
            raise BackendError(self._describe(e)) from None
        if not answer.choices:
            return None
        return answer.choices[0].message.content

    async def ready(self) -> bool:
        """Whether the backend answers (GET /models), cached for a few seconds."""
        checked_at, ok = self._ready
        if time.monotonic() - checked_at < READY_CACHE_S:
            return ok
        try:
            await self.client.models.list(timeout=2.0)
            ok = True
        except openai.APIStatusError:
            ok = True  # it answered; listing models is not supported everywhere
        except openai.APIError:
            ok = False
        self._ready = (time.monotonic(), ok)
        return ok

    async def aclose(self) -> None:
        await self.client.close()


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else "")))

"""A minimal LangChain chat model for any OpenAI-compatible ``/chat/completions`` endpoint (httpx).

Enough to use a served model (vLLM, SGLang, llama.cpp, an API) as a judge from the command line,
without an extra dependency. Errors are raised as ``httpx`` exceptions, so transient ones (timeouts,
429, 5xx) are retried by the caller's retry policy. In Python, any LangChain chat model works too.
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr, SecretStr

__all__ = ["OpenAICompatibleChat"]


class OpenAICompatibleChat(BaseChatModel):
    """``POST {base_url}/chat/completions`` with ``model``, the messages and ``temperature``."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    temperature: float = 0.0
    max_tokens: int | None = 1024
    timeout: float = 120.0

    _client: httpx.Client | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "temperature": self.temperature}

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key.get_secret_value()}"} if self.api_key else {}
            self._client = httpx.Client(
                base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout
            )
        return self._client

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": convert_to_openai_messages(messages, text_format="string"),
            "temperature": self.temperature,
            **({"max_tokens": self.max_tokens} if self.max_tokens else {}),
            **({"stop": stop} if stop else {}),
        }
        response = self._http().post("/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{self.base_url}: not a chat completion response: {str(data)[:200]}") from err
        message = AIMessage(
            content=content,
            response_metadata={
                "model_name": data.get("model", self.model),
                "finish_reason": choice.get("finish_reason"),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

"""LangChain's standard unit suite (no network) for both classes ``local_deepseek()`` returns,
plus what the two add: the local fields, and the same reasoning clean-up in both."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_deepseek import ChatDeepSeek
from langchain_openai import ChatOpenAI
from langchain_tests.unit_tests import ChatModelUnitTests

from dsagent import LocalChatDeepSeek, LocalChatOpenAI

PARAMS = {"model": "deepseek-r1-distill-qwen-7b", "api_key": "k", "base_url": "http://127.0.0.1:9/v1",
          "temperature": 0.6, "max_retries": 0}


class _Unit(ChatModelUnitTests):
    klass: type = LocalChatDeepSeek
    key_env, key_attr = "DEEPSEEK_API_KEY", "api_key"

    @property
    def chat_model_class(self) -> type:
        return self.klass

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return PARAMS

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {self.key_env: "env-key"}, {"model": "m", "base_url": "http://127.0.0.1:9/v1"}, {self.key_attr: "env-key"}


class TestLocalChatDeepSeekUnit(_Unit):
    klass = LocalChatDeepSeek


class TestLocalChatOpenAIUnit(_Unit):
    klass = LocalChatOpenAI
    key_env, key_attr = "OPENAI_API_KEY", "openai_api_key"


@pytest.mark.parametrize(("cls", "base"), [(LocalChatDeepSeek, ChatDeepSeek), (LocalChatOpenAI, ChatOpenAI)])
def test_local_classes_subclass_their_langchain_class_and_add_the_local_fields(cls, base):
    llm = cls(**PARAMS, first_token_timeout=5, idle_timeout=2, fold_system=True)
    assert isinstance(llm, base)
    assert (llm.first_token_timeout, llm.idle_timeout, llm.fold_system, llm.think_open) == (5.0, 2.0, True, False)
    payload = llm._get_request_payload([("system", "Be brief."), ("human", "Hi")], stream=True)
    assert payload["messages"] == [{"role": "user", "content": "Be brief.\n\nHi"}]
    assert payload["timeout"].read == 5.0


@pytest.mark.parametrize("cls", [LocalChatDeepSeek, LocalChatOpenAI])
def test_both_classes_move_raw_think_into_reasoning(cls):
    llm = cls(**PARAMS)
    response = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nParis."}}]}
    message = llm._create_chat_result(response).generations[0].message
    assert message.content == "Paris."
    assert message.additional_kwargs == {"reasoning_content": "hmm"}

"""Request and response bodies of every endpoint (they also make the OpenAPI document).

Three families: the KServe Open Inference Protocol v2 (``/v2``), a plain JSON endpoint (``/classify``) and the
OpenAI-compatible API (``/v1``). Limits here (string length, list sizes) keep a single request bounded; the
token-level limits depend on the model and are checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 100_000  # a far bound; the model's token limit is usually reached first
MAX_STOP = 4

V2Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
ParamValue = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------------------
# Errors


class V2Error(BaseModel):
    error: Annotated[str, Field(description="What was wrong, naming the field at fault.")]


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorInfo


# ---------------------------------------------------------------------------------------------------------
# KServe Open Inference Protocol v2


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: V2Datatype
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2InferInput(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=8)]
    datatype: V2Datatype
    parameters: dict[str, ParamValue] | None = None
    data: Annotated[list[Any], Field(description="Row-major tensor contents, flat or nested.")]


class V2RequestedOutput(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    parameters: dict[str, ParamValue] | None = None


class V2InferRequest(Strict):
    id: Annotated[str | None, Field(default=None, max_length=256)]
    parameters: dict[str, ParamValue] | None = None
    inputs: Annotated[list[V2InferInput], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[V2RequestedOutput] | None, Field(default=None, max_length=16)]


class V2InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: V2Datatype
    parameters: dict[str, ParamValue] | None = None
    data: list[Any]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, ParamValue] | None = None
    outputs: list[V2InferOutput]


# ---------------------------------------------------------------------------------------------------------
# Plain JSON


class ClassifyRequest(Strict):
    text: Annotated[
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
        | Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]], Field(min_length=1)],
        Field(description="One text, or a list of texts (answered in the same order)."),
    ]


class Prediction(BaseModel):
    label: Annotated[str, Field(description="The most likely label.")]
    score: Annotated[float, Field(description="Its probability.")]
    scores: Annotated[dict[str, float], Field(description="Probability of every label.")]


class ClassifyResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible


class OpenAIBase(BaseModel):
    # Unknown fields are accepted and ignored, as OpenAI-compatible servers do for forward compatibility.
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBase):
    include_usage: bool = False


Stop = Annotated[str, Field(min_length=1, max_length=256)]


class SamplingFields(OpenAIBase):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    temperature: Annotated[float | None, Field(default=None, ge=0.0, le=2.0)]
    top_p: Annotated[float | None, Field(default=None, gt=0.0, le=1.0)]
    n: Annotated[int | None, Field(default=None, ge=1, le=128)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Annotated[Stop | list[Stop] | None, Field(default=None)]
    seed: Annotated[int | None, Field(default=None, ge=0, le=2**63 - 1)]
    presence_penalty: Annotated[float | None, Field(default=None, ge=-2.0, le=2.0)]
    frequency_penalty: Annotated[float | None, Field(default=None, ge=-2.0, le=2.0)]
    logit_bias: dict[str, float] | None = None
    user: Annotated[str | None, Field(default=None, max_length=256)]


class CompletionRequest(SamplingFields):
    prompt: Annotated[
        Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]], Field(min_length=1, max_length=64)],
        Field(description="A prompt, or a list of prompts (one choice each)."),
    ]
    max_tokens: Annotated[int | None, Field(default=16, ge=1)]
    echo: bool | None = False
    logprobs: Annotated[int | None, Field(default=None, ge=0, le=5)]
    suffix: str | None = None
    best_of: Annotated[int | None, Field(default=None, ge=1, le=20)]


class TextPart(OpenAIBase):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class ChatMessage(OpenAIBase):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[TextPart] | None = None
    name: str | None = None


class ResponseFormat(OpenAIBase):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int | None, Field(default=None, ge=1)]
    max_completion_tokens: Annotated[int | None, Field(default=None, ge=1)]
    logprobs: bool | None = False
    top_logprobs: Annotated[int | None, Field(default=None, ge=0, le=20)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

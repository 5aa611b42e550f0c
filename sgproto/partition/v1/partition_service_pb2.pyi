from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandlerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDLER_KIND_SERVICE: _ClassVar[HandlerKind]
    HANDLER_KIND_EXCLUSIVE: _ClassVar[HandlerKind]
    HANDLER_KIND_SHARED: _ClassVar[HandlerKind]
    HANDLER_KIND_WORKFLOW: _ClassVar[HandlerKind]

class DeliverStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVER_STATUS_APPLIED: _ClassVar[DeliverStatus]
    DELIVER_STATUS_DUPLICATE: _ClassVar[DeliverStatus]
    DELIVER_STATUS_GONE: _ClassVar[DeliverStatus]

class SendStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEND_STATUS_ACCEPTED: _ClassVar[SendStatus]
    SEND_STATUS_PREVIOUSLY_ACCEPTED: _ClassVar[SendStatus]

class OutputStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STATUS_READY: _ClassVar[OutputStatus]
    OUTPUT_STATUS_NOT_READY: _ClassVar[OutputStatus]
    OUTPUT_STATUS_NOT_FOUND: _ClassVar[OutputStatus]
HANDLER_KIND_SERVICE: HandlerKind
HANDLER_KIND_EXCLUSIVE: HandlerKind
HANDLER_KIND_SHARED: HandlerKind
HANDLER_KIND_WORKFLOW: HandlerKind
DELIVER_STATUS_APPLIED: DeliverStatus
DELIVER_STATUS_DUPLICATE: DeliverStatus
DELIVER_STATUS_GONE: DeliverStatus
SEND_STATUS_ACCEPTED: SendStatus
SEND_STATUS_PREVIOUSLY_ACCEPTED: SendStatus
OUTPUT_STATUS_READY: OutputStatus
OUTPUT_STATUS_NOT_READY: OutputStatus
OUTPUT_STATUS_NOT_FOUND: OutputStatus

class Header(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("partition", "invocation_id", "service", "handler", "key", "kind", "body", "headers", "idempotency_key", "completion_retention_ms", "journal_retention_ms", "execution_time_ms", "wait", "parent", "request_nonce")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_NONCE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    invocation_id: str
    service: str
    handler: str
    key: str
    kind: HandlerKind
    body: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    idempotency_key: str
    completion_retention_ms: int
    journal_retention_ms: int
    execution_time_ms: int
    wait: bool
    parent: Parent
    request_nonce: bytes
    def __init__(self, partition: _Optional[int] = ..., invocation_id: _Optional[str] = ..., service: _Optional[str] = ..., handler: _Optional[str] = ..., key: _Optional[str] = ..., kind: _Optional[_Union[HandlerKind, str]] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., completion_retention_ms: _Optional[int] = ..., journal_retention_ms: _Optional[int] = ..., execution_time_ms: _Optional[int] = ..., wait: _Optional[bool] = ..., parent: _Optional[_Union[Parent, _Mapping]] = ..., request_nonce: _Optional[bytes] = ...) -> None: ...

class Parent(_message.Message):
    __slots__ = ("invocation_id", "partition", "result_completion_id")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    RESULT_COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    partition: int
    result_completion_id: int
    def __init__(self, invocation_id: _Optional[str] = ..., partition: _Optional[int] = ..., result_completion_id: _Optional[int] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("partition", "invocation_id", "key", "frame")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    partition: int
    invocation_id: str
    key: str
    frame: bytes
    def __init__(self, partition: _Optional[int] = ..., invocation_id: _Optional[str] = ..., key: _Optional[str] = ..., frame: _Optional[bytes] = ...) -> None: ...

class OutboxMessage(_message.Message):
    __slots__ = ("invoke", "notify")
    INVOKE_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    invoke: InvokeRequest
    notify: Notification
    def __init__(self, invoke: _Optional[_Union[InvokeRequest, _Mapping]] = ..., notify: _Optional[_Union[Notification, _Mapping]] = ...) -> None: ...

class DeliverResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DeliverStatus
    def __init__(self, status: _Optional[_Union[DeliverStatus, str]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("value", "failure_code", "failure_message", "expires_ms")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    failure_code: int
    failure_message: str
    expires_ms: int
    def __init__(self, value: _Optional[bytes] = ..., failure_code: _Optional[int] = ..., failure_message: _Optional[str] = ..., expires_ms: _Optional[int] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("invocation_id", "send_status", "execution_time_ms", "result")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    send_status: SendStatus
    execution_time_ms: int
    result: Result
    def __init__(self, invocation_id: _Optional[str] = ..., send_status: _Optional[_Union[SendStatus, str]] = ..., execution_time_ms: _Optional[int] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class InvocationRef(_message.Message):
    __slots__ = ("partition", "invocation_id")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    partition: int
    invocation_id: str
    def __init__(self, partition: _Optional[int] = ..., invocation_id: _Optional[str] = ...) -> None: ...

class OutputResponse(_message.Message):
    __slots__ = ("status", "result")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    status: OutputStatus
    result: Result
    def __init__(self, status: _Optional[_Union[OutputStatus, str]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

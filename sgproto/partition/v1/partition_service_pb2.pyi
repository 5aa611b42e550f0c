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

class ManageCommand(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MANAGE_COMMAND_CANCEL: _ClassVar[ManageCommand]
    MANAGE_COMMAND_KILL: _ClassVar[ManageCommand]
    MANAGE_COMMAND_PURGE: _ClassVar[ManageCommand]
    MANAGE_COMMAND_PURGE_JOURNAL: _ClassVar[ManageCommand]
    MANAGE_COMMAND_PAUSE: _ClassVar[ManageCommand]
    MANAGE_COMMAND_RESUME: _ClassVar[ManageCommand]
    MANAGE_COMMAND_RESTART_AS_NEW: _ClassVar[ManageCommand]

class ManageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MANAGE_STATUS_DONE: _ClassVar[ManageStatus]
    MANAGE_STATUS_APPENDED: _ClassVar[ManageStatus]
    MANAGE_STATUS_ALREADY: _ClassVar[ManageStatus]
    MANAGE_STATUS_NOT_FOUND: _ClassVar[ManageStatus]
    MANAGE_STATUS_COMPLETED: _ClassVar[ManageStatus]
    MANAGE_STATUS_NOT_COMPLETED: _ClassVar[ManageStatus]
    MANAGE_STATUS_WRONG_STATE: _ClassVar[ManageStatus]
    MANAGE_STATUS_UNSUPPORTED: _ClassVar[ManageStatus]
    MANAGE_STATUS_MISSING_INPUT: _ClassVar[ManageStatus]
    MANAGE_STATUS_COPY_RANGE_INVALID: _ClassVar[ManageStatus]
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
MANAGE_COMMAND_CANCEL: ManageCommand
MANAGE_COMMAND_KILL: ManageCommand
MANAGE_COMMAND_PURGE: ManageCommand
MANAGE_COMMAND_PURGE_JOURNAL: ManageCommand
MANAGE_COMMAND_PAUSE: ManageCommand
MANAGE_COMMAND_RESUME: ManageCommand
MANAGE_COMMAND_RESTART_AS_NEW: ManageCommand
MANAGE_STATUS_DONE: ManageStatus
MANAGE_STATUS_APPENDED: ManageStatus
MANAGE_STATUS_ALREADY: ManageStatus
MANAGE_STATUS_NOT_FOUND: ManageStatus
MANAGE_STATUS_COMPLETED: ManageStatus
MANAGE_STATUS_NOT_COMPLETED: ManageStatus
MANAGE_STATUS_WRONG_STATE: ManageStatus
MANAGE_STATUS_UNSUPPORTED: ManageStatus
MANAGE_STATUS_MISSING_INPUT: ManageStatus
MANAGE_STATUS_COPY_RANGE_INVALID: ManageStatus

class Header(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("partition", "invocation_id", "service", "handler", "key", "kind", "body", "headers", "idempotency_key", "completion_retention_ms", "journal_retention_ms", "execution_time_ms", "wait", "parent", "request_nonce", "scope", "limit_key", "idempotency_key_generated", "invoked_by")
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
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_GENERATED_FIELD_NUMBER: _ClassVar[int]
    INVOKED_BY_FIELD_NUMBER: _ClassVar[int]
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
    scope: str
    limit_key: str
    idempotency_key_generated: bool
    invoked_by: str
    def __init__(self, partition: _Optional[int] = ..., invocation_id: _Optional[str] = ..., service: _Optional[str] = ..., handler: _Optional[str] = ..., key: _Optional[str] = ..., kind: _Optional[_Union[HandlerKind, str]] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., completion_retention_ms: _Optional[int] = ..., journal_retention_ms: _Optional[int] = ..., execution_time_ms: _Optional[int] = ..., wait: _Optional[bool] = ..., parent: _Optional[_Union[Parent, _Mapping]] = ..., request_nonce: _Optional[bytes] = ..., scope: _Optional[str] = ..., limit_key: _Optional[str] = ..., idempotency_key_generated: _Optional[bool] = ..., invoked_by: _Optional[str] = ...) -> None: ...

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

class StateEdit(_message.Message):
    __slots__ = ("service", "key", "version", "entries", "scope")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    service: str
    key: str
    version: str
    entries: _containers.RepeatedCompositeFieldContainer[StateEntry]
    scope: str
    def __init__(self, service: _Optional[str] = ..., key: _Optional[str] = ..., version: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ..., scope: _Optional[str] = ...) -> None: ...

class StateEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

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
    __slots__ = ("value", "failure_code", "failure_message", "expires_ms", "failure_metadata")
    class FailureMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_METADATA_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    failure_code: int
    failure_message: str
    expires_ms: int
    failure_metadata: _containers.ScalarMap[str, str]
    def __init__(self, value: _Optional[bytes] = ..., failure_code: _Optional[int] = ..., failure_message: _Optional[str] = ..., expires_ms: _Optional[int] = ..., failure_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("invocation_id", "send_status", "execution_time_ms", "result", "rejected_retry_after_ms")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    send_status: SendStatus
    execution_time_ms: int
    result: Result
    rejected_retry_after_ms: int
    def __init__(self, invocation_id: _Optional[str] = ..., send_status: _Optional[_Union[SendStatus, str]] = ..., execution_time_ms: _Optional[int] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., rejected_retry_after_ms: _Optional[int] = ...) -> None: ...

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

class ManageRequest(_message.Message):
    __slots__ = ("partition", "invocation_id", "command", "deployment_id", "restart_from", "new_invocation_id", "completion_retention_ms", "journal_retention_ms")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESTART_FROM_FIELD_NUMBER: _ClassVar[int]
    NEW_INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_RETENTION_MS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    invocation_id: str
    command: ManageCommand
    deployment_id: str
    restart_from: int
    new_invocation_id: str
    completion_retention_ms: int
    journal_retention_ms: int
    def __init__(self, partition: _Optional[int] = ..., invocation_id: _Optional[str] = ..., command: _Optional[_Union[ManageCommand, str]] = ..., deployment_id: _Optional[str] = ..., restart_from: _Optional[int] = ..., new_invocation_id: _Optional[str] = ..., completion_retention_ms: _Optional[int] = ..., journal_retention_ms: _Optional[int] = ...) -> None: ...

class ManageResponse(_message.Message):
    __slots__ = ("status", "invocation_status", "new_invocation_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEW_INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    status: ManageStatus
    invocation_status: str
    new_invocation_id: str
    def __init__(self, status: _Optional[_Union[ManageStatus, str]] = ..., invocation_status: _Optional[str] = ..., new_invocation_id: _Optional[str] = ...) -> None: ...

class StreamInvoke(_message.Message):
    __slots__ = ("id", "request")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: InvokeRequest
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[InvokeRequest, _Mapping]] = ...) -> None: ...

class InvokeBatch(_message.Message):
    __slots__ = ("invokes", "cancels")
    INVOKES_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    invokes: _containers.RepeatedCompositeFieldContainer[StreamInvoke]
    cancels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, invokes: _Optional[_Iterable[_Union[StreamInvoke, _Mapping]]] = ..., cancels: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("id", "response", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    response: InvokeResponse
    error: StreamError
    def __init__(self, id: _Optional[int] = ..., response: _Optional[_Union[InvokeResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class InvokeResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StreamResult, _Mapping]]] = ...) -> None: ...

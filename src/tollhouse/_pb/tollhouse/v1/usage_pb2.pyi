from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageRecord(_message.Message):
    __slots__ = ("usage_id", "customer", "plan", "feature", "units", "method", "path", "decision_id", "admitted_at_ms", "state", "instance", "request_id", "response_code", "request_bytes", "response_bytes", "duration_us", "upstream_served", "response_flags", "billable", "finalized_at_ms", "degraded")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[UsageRecord.State]
        RESERVED: _ClassVar[UsageRecord.State]
        CONFIRMED: _ClassVar[UsageRecord.State]
        VOIDED: _ClassVar[UsageRecord.State]
        UNCONFIRMED: _ClassVar[UsageRecord.State]
    STATE_UNSPECIFIED: UsageRecord.State
    RESERVED: UsageRecord.State
    CONFIRMED: UsageRecord.State
    VOIDED: UsageRecord.State
    UNCONFIRMED: UsageRecord.State
    class UnitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_SERVED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    BILLABLE_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    usage_id: str
    customer: str
    plan: str
    feature: str
    units: _containers.ScalarMap[str, int]
    method: str
    path: str
    decision_id: str
    admitted_at_ms: int
    state: UsageRecord.State
    instance: str
    request_id: str
    response_code: int
    request_bytes: int
    response_bytes: int
    duration_us: int
    upstream_served: bool
    response_flags: str
    billable: bool
    finalized_at_ms: int
    degraded: bool
    def __init__(self, usage_id: _Optional[str] = ..., customer: _Optional[str] = ..., plan: _Optional[str] = ..., feature: _Optional[str] = ..., units: _Optional[_Mapping[str, int]] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., decision_id: _Optional[str] = ..., admitted_at_ms: _Optional[int] = ..., state: _Optional[_Union[UsageRecord.State, str]] = ..., instance: _Optional[str] = ..., request_id: _Optional[str] = ..., response_code: _Optional[int] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., duration_us: _Optional[int] = ..., upstream_served: _Optional[bool] = ..., response_flags: _Optional[str] = ..., billable: _Optional[bool] = ..., finalized_at_ms: _Optional[int] = ..., degraded: _Optional[bool] = ...) -> None: ...

class ServedFact(_message.Message):
    __slots__ = ("usage_id", "response_code", "request_bytes", "response_bytes", "duration_us", "upstream_served", "response_flags", "request_id", "meter_headers", "received_at_ms", "instance")
    class MeterHeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_SERVED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METER_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    usage_id: str
    response_code: int
    request_bytes: int
    response_bytes: int
    duration_us: int
    upstream_served: bool
    response_flags: str
    request_id: str
    meter_headers: _containers.ScalarMap[str, str]
    received_at_ms: int
    instance: str
    def __init__(self, usage_id: _Optional[str] = ..., response_code: _Optional[int] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., duration_us: _Optional[int] = ..., upstream_served: _Optional[bool] = ..., response_flags: _Optional[str] = ..., request_id: _Optional[str] = ..., meter_headers: _Optional[_Mapping[str, str]] = ..., received_at_ms: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class AccessLogBatch(_message.Message):
    __slots__ = ("received_at_ms", "instance", "message")
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    received_at_ms: int
    instance: str
    message: bytes
    def __init__(self, received_at_ms: _Optional[int] = ..., instance: _Optional[str] = ..., message: _Optional[bytes] = ...) -> None: ...

class UsageFact(_message.Message):
    __slots__ = ("reserved", "served", "final", "access_log")
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOG_FIELD_NUMBER: _ClassVar[int]
    reserved: UsageRecord
    served: ServedFact
    final: UsageRecord
    access_log: AccessLogBatch
    def __init__(self, reserved: _Optional[_Union[UsageRecord, _Mapping]] = ..., served: _Optional[_Union[ServedFact, _Mapping]] = ..., final: _Optional[_Union[UsageRecord, _Mapping]] = ..., access_log: _Optional[_Union[AccessLogBatch, _Mapping]] = ...) -> None: ...

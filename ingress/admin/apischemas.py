"""JSON schemas of the admin API's request and response bodies, for its OpenAPI document.

They describe what `ingress.admin.render` and `ingress.admin.parsing` produce and accept, under
Restate 1.7's component names (`ServiceMetadata`, `RegisterDeploymentRequest` ...). `SCHEMAS` maps
a component name to its schema; `ingress.admin.apidoc` emits the ones its operations reference.
"""

from __future__ import annotations

from typing import Any

_DURATION = "A duration: friendly (`1d 2h`, `500ms`) or ISO 8601 (`PT5M`)"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string_map(description: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}, "description": description}


def _durations(*names: str, nullable: bool = False) -> dict[str, Any]:
    ty: Any = ["string", "null"] if nullable else "string"
    return {name: {"type": ty, "description": _DURATION} for name in names}


_INFO = {"type": "array", "description": "Notes about settings that have no effect",
         "items": {"type": "object", "required": ["code", "message"],
                   "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}

_RETRY_PROPERTIES: dict[str, Any] = {
    "initial_interval": {"type": "string", "description": _DURATION},
    "exponentiation_factor": {"type": "number"},
    "max_attempts": {"type": ["integer", "null"], "minimum": 1, "description": "Attempts in all, the first included"},
    "max_interval": {"type": "string", "description": _DURATION},
    "on_max_attempts": _ref("OnMaxAttempts"),
}

_HANDLER: dict[str, Any] = {
    "type": "object", "description": "A handler as registered, with the settings it overrides itself",
    "required": ["name", "public", "input_description", "output_description", "retry_policy"],
    "properties": {
        "name": {"type": "string"},
        "ty": _ref("HandlerMetadataType"),
        "documentation": {"type": "string"},
        "metadata": _string_map("Handler metadata from the manifest"),
        **_durations("idempotency_retention", "journal_retention", "inactivity_timeout", "abort_timeout"),
        "enable_lazy_state": {"type": "boolean"},
        "public": {"type": "boolean", "description": "Whether the ingress accepts calls to this handler"},
        "input_description": {"type": "string"},
        "output_description": {"type": "string"},
        "input_json_schema": {"description": "The input's JSON schema, as the SDK declared it"},
        "output_json_schema": {"description": "The output's JSON schema, as the SDK declared it"},
        "retry_policy": _ref("HandlerRetryPolicyMetadata"),
        "info": _INFO,
    },
}

_SERVICE: dict[str, Any] = {
    "type": "object", "description": "A registered service with its effective settings",
    "required": ["name", "ty", "handlers", "deployment_id", "revision", "public", "idempotency_retention",
                 "inactivity_timeout", "abort_timeout", "enable_lazy_state", "retry_policy"],
    "properties": {
        "name": {"type": "string"},
        "ty": _ref("ServiceType"),
        "handlers": {"type": "array", "items": _ref("HandlerMetadata")},
        "documentation": {"type": "string"},
        "metadata": _string_map("Service metadata from the manifest"),
        "deployment_id": _ref("DeploymentId"),
        "revision": {"type": "integer", "minimum": 1},
        "public": {"type": "boolean", "description": "Whether the ingress accepts calls to this service"},
        **_durations("idempotency_retention", "workflow_completion_retention", "journal_retention",
                     "inactivity_timeout", "abort_timeout"),
        "enable_lazy_state": {"type": "boolean"},
        "retry_policy": _ref("ServiceRetryPolicyMetadata"),
        "info": _INFO,
    },
}

_DEPLOYMENT_PROPERTIES: dict[str, Any] = {
    "id": _ref("DeploymentId"),
    "uri": {"type": "string", "format": "uri"},
    "protocol_type": _ref("ProtocolType"),
    "http_version": {"type": "string", "enum": ["HTTP/1.1", "HTTP/2.0"]},
    "additional_headers": _string_map("Headers sent with every request to the deployment"),
    "metadata": _string_map("Deployment metadata"),
    "created_at": {"type": "string", "format": "date-time"},
    "min_protocol_version": {"type": "integer"},
    "max_protocol_version": {"type": "integer"},
    "sdk_version": {"type": "string"},
}
_DEPLOYMENT_REQUIRED = ["id", "uri", "protocol_type", "http_version", "created_at", "min_protocol_version",
                        "max_protocol_version", "services"]


def _deployment(services: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "required": _DEPLOYMENT_REQUIRED,
            "properties": {**_DEPLOYMENT_PROPERTIES, "services": {"type": "array", "items": services}}}


SCHEMAS: dict[str, Any] = {
    "ErrorDescriptionResponse": {
        "type": "object", "description": "Every admin API error", "required": ["message"],
        "properties": {"message": {"type": "string"},
                       "restate_code": {"type": ["string", "null"], "description": "Restate's error code (META0003 ...)"}},
    },
    "ServiceType": {"type": "string", "enum": ["Service", "VirtualObject", "Workflow"]},
    "HandlerMetadataType": {"type": "string", "enum": ["Exclusive", "Shared", "Workflow"]},
    "ProtocolType": {"type": "string", "enum": ["RequestResponse", "BidiStream"]},
    "OnMaxAttempts": {"type": "string", "enum": ["Pause", "Kill"]},
    "DeploymentId": {"type": "string", "description": "`dp_` followed by the deployment's id"},
    "HandlerRetryPolicyMetadata": {"type": "object", "description": "What the handler overrides; `max_attempts` "
                                   "is always shown", "properties": _RETRY_PROPERTIES},
    "ServiceRetryPolicyMetadata": {"type": "object", "description": "The effective retry policy",
                                   "required": list(_RETRY_PROPERTIES), "properties": _RETRY_PROPERTIES},
    "HandlerMetadata": _HANDLER,
    "ServiceMetadata": _SERVICE,
    "ListServicesResponse": {"type": "object", "required": ["services"],
                             "properties": {"services": {"type": "array", "items": _ref("ServiceMetadata")}}},
    "ListServiceHandlersResponse": {"type": "object", "required": ["handlers"],
                                    "properties": {"handlers": {"type": "array", "items": _ref("HandlerMetadata")}}},
    "ModifyServiceRequest": {
        "type": "object", "description": "Only the fields given change",
        "properties": {"public": {"type": ["boolean", "null"]},
                       **_durations("idempotency_retention", "workflow_completion_retention", "journal_retention",
                                    "inactivity_timeout", "abort_timeout", nullable=True)},
    },
    "RegisterDeploymentRequest": {
        "type": "object", "title": "RegisterHttpDeploymentRequest", "required": ["uri"],
        "properties": {
            "uri": {"type": "string", "format": "uri", "description": "Base URL of the SDK endpoint (http or https)"},
            "additional_headers": _string_map("Headers sent with discovery and every invocation"),
            "metadata": _string_map("Deployment metadata"),
            "use_http_11": {"type": "boolean"},
            "force": {"type": ["boolean", "null"], "description": "Replace a deployment with the same URI (default: "
                      "true in admin API v2, false since v3)"},
            "breaking": {"type": "boolean", "description": "Allow incompatible service changes"},
            "dry_run": {"type": "boolean", "description": "Discover and check, register nothing"},
        },
    },
    "ServiceNameRevPair": {"type": "object", "required": ["name", "revision"],
                           "properties": {"name": {"type": "string"}, "revision": {"type": "integer"}}},
    "RegisterDeploymentResponse": {
        "type": "object", "required": ["id", "services", "min_protocol_version", "max_protocol_version"],
        "properties": {"id": _ref("DeploymentId"), "services": {"type": "array", "items": _ref("ServiceMetadata")},
                       "min_protocol_version": {"type": "integer"}, "max_protocol_version": {"type": "integer"},
                       "sdk_version": {"type": "string"}},
    },
    "DeploymentResponse": _deployment(_ref("ServiceNameRevPair"), "A deployment with its services' names"),
    "DetailedDeploymentResponse": _deployment(_ref("ServiceMetadata"), "A deployment with its services in full"),
    "ListDeploymentsResponse": {"type": "object", "required": ["deployments"],
                                "properties": {"deployments": {"type": "array", "items": _ref("DeploymentResponse")}}},
    "VersionInformation": {
        "type": "object", "required": ["version", "min_admin_api_version", "max_admin_api_version", "features"],
        "properties": {
            "version": {"type": "string", "description": "The Restate release this server mirrors"},
            "min_admin_api_version": {"type": "integer", "minimum": 0},
            "max_admin_api_version": {"type": "integer", "minimum": 0},
            "ingress_endpoint": {"type": "string", "format": "uri"},
            "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
    "RestartAsNewInvocationResponse": {"type": "object", "required": ["new_invocation_id"],
                                       "properties": {"new_invocation_id": {"type": "string"}}},
    "QueryRequest": {"type": "object", "required": ["query"],
                     "properties": {"query": {"type": "string", "description": "One SQL statement"}}},
    "ModifyServiceStateRequest": {
        "type": "object", "required": ["object_key", "new_state"],
        "properties": {
            "version": {"type": ["string", "null"], "description": "Only change the state if it still has this version"},
            "object_key": {"type": "string"},
            "scope": {"type": ["string", "null"], "description": "The scope of the object instance, if any"},
            "new_state": {"type": "object", "description": "State key -> value bytes",
                          "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                               "maximum": 255}}},
        },
    },
}

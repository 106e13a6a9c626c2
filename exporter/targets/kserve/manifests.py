"""The manifests as Python dicts (written with yaml.safe_dump: every value is quoted/escaped by the
YAML library, never pasted into text).

Shutdown timing of the Flask pods, consistent with the generated server
(templates/flask_app/gunicorn.conf.py.j2: SIGTERM -> stop accepting, in-flight requests get
GRACEFUL_TIMEOUT seconds):
    preStop sleep PRESTOP_S      the endpoint leaves every Service/load balancer first
    SIGTERM -> GRACEFUL_TIMEOUT  gunicorn drains in-flight requests
    + MARGIN_S                   before the kubelet's SIGKILL
so terminationGracePeriodSeconds = PRESTOP_S + GRACEFUL_TIMEOUT_S + MARGIN_S.
"""

from __future__ import annotations

from dataclasses import dataclass

PORT = 8501  # the generated server's port (TF-Serving's REST port; Dockerfile EXPOSE)
PRESTOP_S = 5
GRACEFUL_TIMEOUT_S = 30  # set in the pod's env, so the server uses exactly this value
MARGIN_S = 5
TERMINATION_GRACE_S = PRESTOP_S + GRACEFUL_TIMEOUT_S + MARGIN_S
ISVC = "serving.kserve.io/v1beta1"


@dataclass(frozen=True)
class Plan:
    name: str  # DNS-1035 base name of every resource
    namespace: str
    image: str
    storage_uri: str  # where the export directory (kexport all -o OUT) is uploaded
    tf_model_dir: str  # OUT-relative: the TF-Serving repository's model directory (tf-serving target)
    triton_repo: str  # OUT-relative: the Triton repository (triton target)
    triton_model: str  # the model's name in that repository (/v2/models/NAME)
    tensorflow_version: str
    workers: int  # gunicorn workers per pod
    replicas: int
    max_replicas: int
    memory_mi: int  # memory request per pod, MiB (limit: twice)
    annotations: dict


def _meta(plan: Plan, name: str, extra_annotations: dict | None = None) -> dict:
    # An InferenceService's labels reach its pods: they get their own name, so the plain
    # Deployment's Service selector never matches KServe's pods in the same namespace.
    lab = labels(plan) if name == plan.name else {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "kexport"}
    return {"name": name, "namespace": plan.namespace, "labels": lab,
            "annotations": {**plan.annotations, **(extra_annotations or {})}}


def labels(plan: Plan) -> dict:
    """The plain Kubernetes server pods (Deployment selector, Service, PodDisruptionBudget)."""
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": "server",
            "app.kubernetes.io/managed-by": "kexport"}


def resources(plan: Plan, cpu_request: str, cpu_limit: str) -> dict:
    return {"requests": {"cpu": cpu_request, "memory": f"{plan.memory_mi}Mi"},
            "limits": {"cpu": cpu_limit, "memory": f"{2 * plan.memory_mi}Mi"}}


def isvc_tensorflow(plan: Plan) -> dict:
    """(a) the TF-Serving repository's model (versions, warmup records) on KServe's TF-Serving
    runtime (v1 protocol: /v1/models/NAME:predict)."""
    return {"apiVersion": ISVC, "kind": "InferenceService", "metadata": _meta(plan, f"{plan.name}-tf"),
            "spec": {"predictor": {"minReplicas": 1, "maxReplicas": plan.max_replicas, "model": {
                "modelFormat": {"name": "tensorflow"}, "runtimeVersion": plan.tensorflow_version,
                "protocolVersion": "v1", "storageUri": f"{plan.storage_uri}/{plan.tf_model_dir}",
                "resources": resources(plan, "1", "2")}}}}


def isvc_triton(plan: Plan) -> dict:
    """(b) model.onnx on KServe's Triton runtime (Open Inference Protocol v2)."""
    meta = _meta(plan, f"{plan.name}-triton", {"kexport/triton-model": plan.triton_model})  # /v2/models/NAME
    return {"apiVersion": ISVC, "kind": "InferenceService", "metadata": meta,
            "spec": {"predictor": {"minReplicas": 1, "maxReplicas": plan.max_replicas, "model": {
                "modelFormat": {"name": "onnx"}, "runtime": "kserve-tritonserver", "protocolVersion": "v2",
                "storageUri": f"{plan.storage_uri}/{plan.triton_repo}", "resources": resources(plan, "1", "2")}}}}


def server_container(plan: Plan, name: str) -> dict:
    """The generated Flask server's container: probes on its /readyz and /healthz, drained on stop."""
    probe = lambda path, period, failures: {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period,  # noqa: E731
                                            "timeoutSeconds": 2, "failureThreshold": failures}
    return {
        "name": name, "image": plan.image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "BIND", "value": f"0.0.0.0:{PORT}"},
                {"name": "GRACEFUL_TIMEOUT", "value": str(GRACEFUL_TIMEOUT_S)},
                {"name": "WEB_CONCURRENCY", "value": str(plan.workers)}],
        # not ready -> no traffic (Service endpoints, load balancers); the model loads before /readyz answers
        "readinessProbe": probe("/readyz", 5, 2),
        "livenessProbe": probe("/healthz", 10, 3),
        "startupProbe": probe("/healthz", 2, 60),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "resources": resources(plan, str(plan.workers), str(plan.workers)),
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def isvc_flask(plan: Plan) -> dict:
    """(c) the generated Flask image as a KServe custom predictor."""
    c = server_container(plan, "kserve-container")
    c["ports"][0]["name"] = "http1"  # Knative: the one serving port, HTTP/1.1
    return {"apiVersion": ISVC, "kind": "InferenceService", "metadata": _meta(plan, f"{plan.name}-flask"),
            "spec": {"predictor": {"minReplicas": plan.replicas, "maxReplicas": plan.max_replicas,
                                   "terminationGracePeriodSeconds": TERMINATION_GRACE_S, "containers": [c]}}}


def deployment(plan: Plan) -> dict:
    c = server_container(plan, "server")
    c["ports"][0]["name"] = "http"
    # No spec.replicas: the HorizontalPodAutoscaler owns it (kubectl apply would reset it otherwise).
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan, plan.name), "spec": {
        "selector": {"matchLabels": labels(plan)},
        # one extra pod at a time, never one fewer ready pod than wanted
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": labels(plan), "annotations": dict(plan.annotations)}, "spec": {
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S, "containers": [c]}}}}


def service(plan: Plan) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(plan, plan.name), "spec": {
        "type": "ClusterIP", "selector": labels(plan),
        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def hpa(plan: Plan) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(plan, plan.name),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
                     "minReplicas": plan.replicas, "maxReplicas": plan.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}}


def pdb(plan: Plan) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(plan, plan.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(plan)}}}


FILES = {
    "kserve/inferenceservice-tensorflow.yaml": isvc_tensorflow,
    "kserve/inferenceservice-triton.yaml": isvc_triton,
    "kserve/inferenceservice-flask.yaml": isvc_flask,
    "kubernetes/deployment.yaml": deployment,
    "kubernetes/service.yaml": service,
    "kubernetes/hpa.yaml": hpa,
    "kubernetes/pdb.yaml": pdb,
}

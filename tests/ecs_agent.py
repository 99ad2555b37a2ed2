"""Plays AWS ECS for the `--runtime ecs` tests: moto's server (ECS, EC2, S3) in this process, and
an agent that runs every task moto lists as running as a Docker container of the bot image, as
the ECS agent would.

- A task's container gets the task definition's environment plus the task's overrides, the
  task definition's CPU and memory, user and read-only root, its volumes as ECS makes them (filled
  from the image where the image declares a VOLUME, else empty and root-owned), the test's Docker
  network, Docker's default /dev/shm (64 MB: Fargate's cannot be sized either), and
  ECS_CONTAINER_METADATA_URI_V4 pointing at this process's metadata endpoint.
- StopTask (the controller's) turns into `docker stop` with the container's stopTimeout; the
  task reads STOPPING until the container is gone, then STOPPED with stop code UserInitiated. A
  container that exits on its own stops its task with EssentialContainerExited. Exit codes are
  the container's.
- A control endpoint lets the test look and act: GET /tasks, GET /calls (RunTask calls with
  their counts), POST /spot/<task id> (a Spot interruption: SIGTERM, stop code SpotInterruption),
  POST /foreign (a task of the pool that no controller launched), POST /iam (an IAM user with
  the policy in the body, and its keys; from then on moto checks every request's signature and
  evaluates its IAM policies, as AWS does, so a call the policy does not allow is AccessDenied).

Started by tests/src/ecs.rs; prints one JSON line with its addresses, then serves until killed.
Usage: ecs_agent.py --network NAME --host IP --image IMAGE --logs DIR
       ecs_agent.py --host IP --no-agent   (moto alone: tasks stay provisioning; for benchmarks)
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from moto import settings as moto_settings
from moto.ecs.models import EC2ContainerServiceBackend, ecs_backends
from moto.moto_api import state_manager
from moto.server import ThreadedMotoServer

ACCOUNT = "123456789012"
REGION = "us-east-1"
CLUSTER = "recfleet"
FAMILY = "recfleet-bot"
CONTAINER = "bot"
BUCKET = "recordings"

calls = []  # RunTask calls: {"count", "started_by", "at"}
containers = {}  # task arn -> {"name", "running", "exit_code", "spot"}
lock = threading.Lock()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend():
    return ecs_backends[ACCOUNT][REGION]


def all_tasks():
    return [t for per_cluster in backend().tasks.values() for t in per_cluster.values()]


def task_by_id(task_id):
    return next((t for t in all_tasks() if t.task_arn.endswith("/" + task_id)), None)


def docker(*args, check=True):
    out = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {args}: {out.stderr.strip()}")
    return out.stdout.strip()


# RunTask is recorded (the test checks batching); StopTask leaves a running container's task
# STOPPING until the container has exited, as ECS does.
original_run_task = EC2ContainerServiceBackend.run_task
original_stop_task = EC2ContainerServiceBackend.stop_task


def run_task(self, *args, **kwargs):
    count = kwargs.get("count", args[2] if len(args) > 2 else None)
    started_by = kwargs.get("started_by", args[4] if len(args) > 4 else None)
    call = {"count": count, "started": 0, "started_by": started_by, "at": time.time(), "error": None}
    with lock:
        calls.append(call)
    try:
        tasks = original_run_task(self, *args, **kwargs)
    except Exception as e:
        call["error"] = type(e).__name__
        raise
    call["started"] = len(tasks)
    return tasks


def stop_task(self, cluster_str, task_str, reason):
    task = original_stop_task(self, cluster_str, task_str, reason)
    with lock:
        c = containers.get(task.task_arn)
        if c and c["running"]:
            task.last_status = "STOPPING"
            threading.Thread(target=docker_stop, args=(c["name"], task), daemon=True).start()
        else:
            task.stop_code = "UserInitiated"
    return task


EC2ContainerServiceBackend.run_task = run_task
EC2ContainerServiceBackend.stop_task = stop_task


def docker_stop(name, task):
    definition = backend().describe_task_definition(task.task_definition_arn)
    grace = definition.container_definitions[0].get("stopTimeout", 30)
    docker("stop", "-t", str(grace), name, check=False)


def environment(task):
    definition = backend().describe_task_definition(task.task_definition_arn)
    container = definition.container_definitions[0]
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    for o in task.overrides.get("containerOverrides", []):
        if o.get("name") == container["name"]:
            env.update({e["name"]: e["value"] for e in o.get("environment", [])})
    return definition, container, env


def start_container(task, args, metadata_base):
    definition, container, env = environment(task)
    task_id = task.task_arn.rsplit("/", 1)[1]
    name = f"recfleet-ecs-{task_id}"
    env["ECS_CONTAINER_METADATA_URI_V4"] = f"{metadata_base}/v4/{task_id}"
    cmd = ["run", "-d", "--name", name, "--network", args.network, "--label", f"recfleet.ecs-agent={args.network}"]
    memory = container.get("memory") or definition.memory
    if memory:
        cmd += ["--memory", f"{int(memory)}m"]
    cpu = definition.cpu or container.get("cpu")
    if cpu:
        cmd += ["--cpus", str(int(cpu) / 1024)]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    if container.get("user"):
        cmd += ["--user", container["user"]]
    if container.get("readonlyRootFilesystem"):
        cmd.append("--read-only")
    # A task's volumes as ECS makes them: filled from the image (contents, owner, mode) where the
    # image declares a VOLUME at that path, otherwise an empty folder owned by root, mode 0755.
    declared = json.loads(docker("image", "inspect", "--format", "{{json .Config.Volumes}}", container["image"]) or "null") or {}
    for m in container.get("mountPoints", []):
        path = m["containerPath"]
        if path in declared:
            cmd += ["-v", path]
        else:
            # Beside the logs, in the test's folder, so it goes with it.
            volumes = os.path.join(os.path.dirname(os.path.abspath(args.logs)), "volumes")
            os.makedirs(volumes, exist_ok=True)
            empty = tempfile.mkdtemp(prefix=f"{task_id}-", dir=volumes)
            os.chmod(empty, 0o755)
            cmd += ["-v", f"{empty}:{path}"]
    cmd.append(container["image"])
    try:
        docker(*cmd)
    except RuntimeError as e:
        print(f"ecs_agent: cannot start {name}: {e}", file=sys.stderr, flush=True)
        task.last_status = task.desired_status = "STOPPED"
        task.stop_code = "TaskFailedToStart"
        task.stopped_reason = f"CannotPullContainerError: {e}"
        return
    with lock:
        containers[task.task_arn] = {"name": name, "running": True, "exit_code": None, "spot": False}
    threading.Thread(target=watch_container, args=(task, name, args.logs), daemon=True).start()


def watch_container(task, name, logs):
    code = docker("wait", name, check=False)
    exit_code = int(code) if code.lstrip("-").isdigit() else None
    with open(os.path.join(logs, f"{name}.log"), "w") as f:
        subprocess.run(["docker", "logs", name], stdout=f, stderr=subprocess.STDOUT)
    docker("rm", "-f", "-v", name, check=False)
    with lock:
        c = containers[task.task_arn]
        c["running"], c["exit_code"] = False, exit_code
        task.containers[0].exitCode = exit_code
        task.containers[0].last_status = "STOPPED"
        if c["spot"]:
            task.stop_code = "SpotInterruption"
            task.stopped_reason = "Your Spot Task was interrupted."
        elif task.desired_status == "STOPPED":
            task.stop_code = "UserInitiated"
        else:
            task.stop_code = "EssentialContainerExited"
            task.stopped_reason = "Essential container in task exited"
        task.last_status = task.desired_status = "STOPPED"


def agent_loop(args, metadata_base):
    while True:
        for task in all_tasks():
            if task.last_status == "RUNNING" and task.desired_status == "RUNNING" and task.task_arn not in containers:
                start_container(task, args, metadata_base)
        time.sleep(0.3)


def describe(task):
    c = containers.get(task.task_arn, {})
    return {
        "arn": task.task_arn,
        "id": task.task_arn.rsplit("/", 1)[1],
        "last_status": task.last_status,
        "desired_status": task.desired_status,
        "stop_code": getattr(task, "stop_code", None),
        "stopped_reason": task.stopped_reason,
        "started_by": task.started_by,
        "tags": {t["key"]: t["value"] for t in (task.tags or [])},
        "overrides": {e["name"]: e["value"] for o in task.overrides.get("containerOverrides", []) for e in o.get("environment", [])},
        "container_running": c.get("running", False),
        "exit_code": c.get("exit_code"),
    }


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts == ["tasks"]:
            with lock:
                return self.reply(200, [describe(t) for t in all_tasks()])
        if parts == ["calls"]:
            with lock:
                return self.reply(200, list(calls))
        if len(parts) == 3 and parts[0] == "v4" and parts[2] == "task":
            task = task_by_id(parts[1])
            if task is None:
                return self.reply(404, {"error": "no such task"})
            return self.reply(200, {"TaskARN": task.task_arn, "Cluster": task.cluster_arn, "Family": FAMILY, "DesiredStatus": task.desired_status})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if len(parts) == 2 and parts[0] == "spot":
            task = task_by_id(parts[1])
            with lock:
                c = containers.get(task.task_arn) if task else None
                if not c or not c["running"]:
                    return self.reply(409, {"error": "no running container for that task"})
                c["spot"] = True
                # ECS sets the stop code when the stop begins; the task stops once its
                # container has exited (at most the stop timeout after SIGTERM).
                task.desired_status = "STOPPED"
                task.last_status = "STOPPING"
                task.stop_code = "SpotInterruption"
                task.stopped_reason = "Your Spot Task was interrupted."
            threading.Thread(target=docker_stop, args=(c["name"], task), daemon=True).start()
            return self.reply(200, describe(task))
        if parts == ["iam"]:
            iam = SESSION.client("iam", endpoint_url=ENDPOINT)
            name = body.get("user", "recfleet-controller")
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="recfleet", PolicyDocument=json.dumps(body["policy"]))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            # Every request to moto is now authenticated and authorized (the harness itself works
            # on moto's backend directly, not through its API).
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
            return self.reply(200, {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]})
        if parts == ["foreign"]:
            env = [{"name": k, "value": v} for k, v in body.get("env", {}).items()]
            tasks = original_run_task(
                backend(),
                CLUSTER,
                FAMILY,
                1,
                {"containerOverrides": [{"name": CONTAINER, "environment": env}]},
                body["started_by"],
                [{"key": k, "value": v} for k, v in body.get("tags", {}).items()],
                "FARGATE",
                networking_configuration=NETWORK,
            )
            return self.reply(200, describe(tasks[0]))
        self.reply(404, {"error": "not found"})


NETWORK = {}
SESSION = None
ENDPOINT = None


def main():
    global NETWORK, SESSION, ENDPOINT
    p = argparse.ArgumentParser()
    p.add_argument("--network")
    p.add_argument("--host", required=True)
    p.add_argument("--image", default="recfleet-bot:dev")
    p.add_argument("--logs")
    p.add_argument("--no-agent", action="store_true", help="run no containers: moto's tasks stay provisioning")
    args = p.parse_args()
    if not args.no_agent and not (args.network and args.logs):
        p.error("--network and --logs are needed unless --no-agent")

    state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 1_000_000})
    moto_port = free_port()
    server = ThreadedMotoServer(ip_address=args.host, port=moto_port, verbose=False)
    server.start()
    endpoint = f"http://{args.host}:{moto_port}"
    session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
    SESSION, ENDPOINT = session, endpoint
    ec2 = session.client("ec2", endpoint_url=endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    # moto names a task's network interface only in a VPC with DNS hostnames (else RunTask fails).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.16.0/20")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="recfleet-bots", Description="bots: egress only", VpcId=vpc)["GroupId"]
    NETWORK = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}}
    ecs = session.client("ecs", endpoint_url=endpoint)
    ecs.create_cluster(clusterName=CLUSTER)
    # As terraform/ defines it, with what a test can give: the S3 endpoint and keys in the
    # environment stand in for the task role.
    ecs.register_task_definition(
        family=FAMILY,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        volumes=[{"name": "spool"}, {"name": "tmp"}, {"name": "home"}],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": args.image,
                "memory": 2048,
                "essential": True,
                "stopTimeout": 30,
                # As terraform/ runs it: not root, a read-only root, volumes where it writes.
                "user": "10001",
                "readonlyRootFilesystem": True,
                "mountPoints": [
                    {"sourceVolume": "spool", "containerPath": "/var/spool/recfleet"},
                    {"sourceVolume": "tmp", "containerPath": "/tmp"},
                    {"sourceVolume": "home", "containerPath": "/home/recfleet"},
                ],
                "environment": [
                    {"name": "AWS_ENDPOINT_URL", "value": endpoint},
                    {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
                    {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
                    {"name": "AWS_REGION", "value": REGION},
                    {"name": "RECFLEET_LOG_FORMAT", "value": "json"},
                ],
            }
        ],
    )
    session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)

    control_port = free_port()
    control = ThreadingHTTPServer((args.host, control_port), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    control_url = f"http://{args.host}:{control_port}"
    if not args.no_agent:
        threading.Thread(target=agent_loop, args=(args, control_url), daemon=True).start()

    def stop(*_):
        for c in list(containers.values()):
            docker("rm", "-f", "-v", c["name"], check=False)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "control": control_url,
                "cluster": CLUSTER,
                "task_definition": FAMILY,
                "subnet": subnet,
                "security_group": group,
                "bucket": BUCKET,
                "region": REGION,
            }
        ),
        flush=True,
    )
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

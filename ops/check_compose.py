#!/usr/bin/env python3
"""Checks docker-compose.yml where `docker compose config` cannot run (and what it does not
check): the plain stack is the one documented, and the cluster profile is whole.

Usage: python3 ops/check_compose.py [docker-compose.yml]   (needs PyYAML)

- The services without a profile, which plain `docker compose up` starts, are exactly
  PLAIN_SERVICES.
- The cluster profile has a NATS service with JetStream (-js) and its store on a named volume;
  at least two chatd instances (the image of the plain `chatd` service), each with its own
  INSTANCE_ID and its own named volume on its DATA_DIR, NATS_URL naming that NATS service, and
  MONGO_URI (cluster mode refuses to start without it); a load balancer that publishes a port,
  whose mounted config file exists and names every instance; and a Prometheus whose mounted
  config has the rule files of ops/prometheus.yml, mounted beside it, and every instance as a
  target.
- One Alertmanager, its image pinned by tag, its published ports bound to 127.0.0.1, its
  mounted config file present with a route whose receiver (and every route's) is declared;
  and every Prometheus, plain or cluster, sending alerts to it (alerting: alertmanagers:).
- Every named volume is declared, and no two services publish the same host port (the plain
  services start with the cluster profile too).
- Safe defaults: only the plain chatd and the load balancer publish ports beyond 127.0.0.1;
  every chatd has METRICS_PORT (its /metrics and /admin/*) and does not publish it, takes
  JWT_SECRET and ADMIN_TOKEN as files of declared secrets it mounts (never as variables), and
  waits for a MongoDB that has a healthcheck (condition: service_healthy); Grafana lets no
  anonymous visitor in and reads its admin password from a secret.
Exits 1 with one line per problem found.
"""

import os
import sys
from urllib.parse import urlsplit

import yaml

PLAIN_SERVICES = {"chatd", "mongo", "prometheus", "grafana", "alertmanager"}
ALERTMANAGER_PORT = 9093
PROFILE = "cluster"
NATS_PORT = 4222


def environment(service):
    """A service's environment as a dict, whichever of compose's two forms it is written in."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else str(v) for k, v in env.items()}


def mounts(service):
    """(source, target) of each of a service's volumes, short form or long form."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append((volume.get("source"), volume.get("target")))
        else:
            parts = str(volume).split(":")
            result.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    return result


def is_named(source):
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def published_ports(service):
    """The host side of each published port ("8000:8080" publishes 8000)."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                result.append(str(port["published"]))
            continue
        parts = str(port).split(":")
        if len(parts) >= 2:
            result.append(parts[-2])
    return result


def command_args(service):
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(a) for a in command]


def check(path):
    problems = []
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())

    def profiles(service):
        return service.get("profiles") or []

    plain = {name for name, s in services.items() if not profiles(s)}
    if plain != PLAIN_SERVICES:
        problems.append(
            f"services without a profile are {sorted(plain)}, expected {sorted(PLAIN_SERVICES)}"
        )
    cluster = {name: s for name, s in services.items() if PROFILE in profiles(s)}
    if not cluster:
        return problems + [f"no service has the profile {PROFILE!r}"]

    # Named volumes must be declared; host ports must not collide.
    owners = {}
    for name, service in services.items():
        for source, _ in mounts(service):
            if is_named(source) and source not in declared_volumes:
                problems.append(f"{name}: volume {source!r} is not declared under volumes:")
        for port in published_ports(service):
            if port in owners:
                problems.append(f"{name} and {owners[port]} both publish host port {port}")
            owners[port] = name

    # NATS with JetStream, its store on a named volume.
    nats = [n for n, s in cluster.items() if str(s.get("image", "")).startswith("nats:")]
    if len(nats) != 1:
        problems.append(f"the {PROFILE} profile needs one nats service, found {nats}")
        nats_name = None
    else:
        nats_name = nats[0]
        args = command_args(cluster[nats_name])
        if not {"-js", "--jetstream"} & set(args):
            problems.append(f"{nats_name}: JetStream is off (no -js in its command {args})")
        store = None
        for flag in ("-sd", "--store_dir"):
            if flag in args and args.index(flag) + 1 < len(args):
                store = args[args.index(flag) + 1]
        named = [t for s, t in mounts(cluster[nats_name]) if is_named(s)]
        if store is None:
            problems.append(f"{nats_name}: no -sd store directory in its command")
        elif store not in named:
            problems.append(f"{nats_name}: its store {store} is not on a named volume")

    # The chatd instances: the plain chatd's image, in the cluster profile.
    image = (services.get("chatd") or {}).get("image")
    instances = {n: s for n, s in cluster.items() if image and s.get("image") == image}
    if len(instances) < 2:
        problems.append(
            f"the {PROFILE} profile has {len(instances)} chatd instances, needs 2 or more"
        )
    ids, data_volumes = {}, {}
    for name, service in sorted(instances.items()):
        env = environment(service)
        instance_id = env.get("INSTANCE_ID")
        if not instance_id:
            problems.append(f"{name}: no INSTANCE_ID")
        elif instance_id in ids:
            problems.append(f"{name}: INSTANCE_ID {instance_id} is also {ids[instance_id]}'s")
        else:
            ids[instance_id] = name
        data_dir = env.get("DATA_DIR") or "/data"
        volume = next((s for s, t in mounts(service) if t == data_dir and is_named(s)), None)
        if volume is None:
            problems.append(f"{name}: DATA_DIR {data_dir} is not on a named volume")
        elif volume in data_volumes:
            problems.append(f"{name}: DATA_DIR volume {volume} is also {data_volumes[volume]}'s")
        else:
            data_volumes[volume] = name
        nats_url = env.get("NATS_URL")
        if not nats_url:
            problems.append(f"{name}: no NATS_URL, so it would not run in cluster mode")
        elif nats_name is not None:
            url = urlsplit(nats_url)
            port = url.port or NATS_PORT
            if url.scheme != "nats" or url.hostname != nats_name or port != NATS_PORT:
                problems.append(
                    f"{name}: NATS_URL {nats_url} is not nats://{nats_name}:{NATS_PORT}"
                )
        if not env.get("MONGO_URI"):
            problems.append(f"{name}: no MONGO_URI; chatd refuses cluster mode without it")

    def http_address(name):
        return f"{name}:{environment(instances[name]).get('PORT') or '8080'}"

    def metrics_address(name):
        env = environment(instances[name])
        return f"{name}:{env.get('METRICS_PORT') or env.get('PORT') or '8080'}"

    def mounted_files(service):
        """(host path, container path) of each file bind-mounted from the repository."""
        return [
            (os.path.normpath(os.path.join(base, s)), t)
            for s, t in mounts(service)
            if s and s.startswith(".")
        ]

    # The load balancer: publishes a port, and its config names every instance.
    balancers = {
        n: s
        for n, s in cluster.items()
        if str(s.get("image", "")).split(":")[0] in ("nginx", "haproxy", "traefik", "caddy")
    }
    if len(balancers) != 1:
        problems.append(f"the {PROFILE} profile needs one load balancer, found {sorted(balancers)}")
    for name, service in balancers.items():
        if not published_ports(service):
            problems.append(f"{name}: publishes no port")
        files = mounted_files(service)
        if not files:
            problems.append(f"{name}: mounts no config file from the repository")
        for host, _ in files:
            rel = os.path.relpath(host, base)
            if not os.path.isfile(host):
                problems.append(f"{name}: its config {rel} does not exist")
                continue
            with open(host) as f:
                text = f.read()
            for instance in sorted(instances):
                if http_address(instance) not in text:
                    problems.append(f"{name}: {rel} does not name {http_address(instance)}")
            if "Upgrade" not in text:
                problems.append(f"{name}: {rel} passes no Upgrade header")

    # Prometheus: the plain config's rule files, and every instance a target.
    proms = {
        n: s
        for n, s in cluster.items()
        if str(s.get("image", "")).startswith("prom/prometheus")
    }
    if len(proms) != 1:
        problems.append(f"the {PROFILE} profile needs one Prometheus, found {sorted(proms)}")
    with open(os.path.join(base, "ops", "prometheus.yml")) as f:
        plain_rules = yaml.safe_load(f).get("rule_files") or []
    for name, service in proms.items():
        config_target = "/etc/prometheus/prometheus.yml"
        for arg in command_args(service):
            if arg.startswith("--config.file="):
                config_target = arg.split("=", 1)[1]
        files = mounted_files(service)
        config = next((h for h, t in files if t == config_target), None)
        if config is None or not os.path.isfile(config):
            problems.append(f"{name}: no config file of the repository at {config_target}")
            continue
        rel = os.path.relpath(config, base)
        with open(config) as f:
            prom = yaml.safe_load(f)
        rules = prom.get("rule_files") or []
        if rules != plain_rules:
            problems.append(
                f"{name}: {rel} has rule_files {rules}, ops/prometheus.yml has {plain_rules}"
            )
        targets_in = {t for _, t in files}
        for rule in rules:
            if os.path.join(os.path.dirname(config_target), rule) not in targets_in:
                problems.append(f"{name}: rule file {rule} is not mounted beside {config_target}")
        targets = {
            target
            for job in prom.get("scrape_configs") or []
            for static in job.get("static_configs") or []
            for target in static.get("targets") or []
        }
        for instance in sorted(instances):
            if metrics_address(instance) not in targets:
                problems.append(f"{name}: {rel} does not scrape {metrics_address(instance)}")

    problems += check_alertmanager(services, base, mounted_files)
    problems += check_safe_defaults(compose, image)
    return problems


def check_safe_defaults(compose, chatd_image):
    """What compose publishes, and how secrets reach the containers."""
    problems = []
    services = compose.get("services") or {}
    declared_secrets = set((compose.get("secrets") or {}).keys())
    balancers = {
        n
        for n, s in services.items()
        if str(s.get("image", "")).split(":")[0] in ("nginx", "haproxy", "traefik", "caddy")
    }
    for name, service in services.items():
        if name == "chatd" or name in balancers:
            continue
        for port in service.get("ports") or []:
            text = str(port.get("host_ip", "")) if isinstance(port, dict) else str(port)
            if not text.startswith("127.0.0.1:") and text != "127.0.0.1":
                problems.append(f"{name}: port {port} is published beyond 127.0.0.1")

    def mounted_secrets(service):
        return {s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []}

    chatds = {n: s for n, s in services.items() if chatd_image and s.get("image") == chatd_image}
    for name, service in sorted(chatds.items()):
        env = environment(service)
        metrics_port = env.get("METRICS_PORT")
        if not metrics_port:
            problems.append(f"{name}: no METRICS_PORT, so /metrics and /admin/* share its public port")
        else:
            for port in service.get("ports") or []:
                container = str(port.get("target")) if isinstance(port, dict) else str(port).split(":")[-1]
                if container.split("/")[0] == metrics_port:
                    problems.append(f"{name}: publishes its internal port {metrics_port}")
        for secret in ("JWT_SECRET", "ADMIN_TOKEN"):
            if env.get(secret):
                problems.append(f"{name}: {secret} is a variable; use {secret}_FILE and a secret")
            path = env.get(f"{secret}_FILE") or ""
            source = path.removeprefix("/run/secrets/")
            if not path.startswith("/run/secrets/") or source not in mounted_secrets(service):
                problems.append(f"{name}: {secret}_FILE is not a secret it mounts (/run/secrets/…)")
            elif source not in declared_secrets:
                problems.append(f"{name}: secret {source} is not declared under secrets:")
        depends = service.get("depends_on") or {}
        mongo = depends.get("mongo") if isinstance(depends, dict) else None
        if (mongo or {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for mongo with condition: service_healthy")
    if "healthcheck" not in (services.get("mongo") or {}):
        problems.append("mongo: no healthcheck, so no one can wait for it to answer")

    grafana = services.get("grafana") or {}
    env = environment(grafana)
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() != "false":
        problems.append("grafana: anonymous access is on")
    password = env.get("GF_SECURITY_ADMIN_PASSWORD__FILE") or ""
    if env.get("GF_SECURITY_ADMIN_PASSWORD") or not password.startswith("/run/secrets/"):
        problems.append("grafana: its admin password is not read from a secret")
    elif password.removeprefix("/run/secrets/") not in mounted_secrets(grafana):
        problems.append("grafana: it does not mount the secret its password is read from")
    return problems


def check_alertmanager(services, base, mounted_files):
    """One Alertmanager, pinned, on this host only, with a whole config; every Prometheus sends
    to it."""
    problems = []
    managers = {
        n: s
        for n, s in services.items()
        if str(s.get("image", "")).startswith("prom/alertmanager")
    }
    if len(managers) != 1:
        return [f"needs one Alertmanager (prom/alertmanager), found {sorted(managers)}"]
    name, service = next(iter(managers.items()))
    tag = str(service["image"]).partition(":")[2]
    if not tag or tag == "latest":
        problems.append(f"{name}: image {service['image']} is not pinned by tag")
    for port in service.get("ports") or []:
        text = str(port.get("host_ip", "")) if isinstance(port, dict) else str(port)
        if not text.startswith("127.0.0.1"):
            problems.append(f"{name}: port {port} is published beyond 127.0.0.1")
    config_target = "/etc/alertmanager/alertmanager.yml"
    for arg in command_args(service):
        if arg.startswith("--config.file="):
            config_target = arg.split("=", 1)[1]
    config = next((h for h, t in mounted_files(service) if t == config_target), None)
    if config is None or not os.path.isfile(config):
        problems.append(f"{name}: no config file of the repository at {config_target}")
    else:
        rel = os.path.relpath(config, base)
        with open(config) as f:
            am = yaml.safe_load(f) or {}
        receivers = {r.get("name") for r in am.get("receivers") or []}
        routes = [am.get("route") or {}]
        if not routes[0].get("receiver"):
            problems.append(f"{name}: {rel} has no route with a receiver")
        while routes:
            route = routes.pop()
            receiver = route.get("receiver")
            if receiver is not None and receiver not in receivers:
                problems.append(f"{name}: {rel} routes to {receiver!r}, which is not a receiver")
            routes.extend(route.get("routes") or [])
    # Every Prometheus sends its alerts to it.
    address = f"{name}:{ALERTMANAGER_PORT}"
    for prom_name, prom_service in services.items():
        if not str(prom_service.get("image", "")).startswith("prom/prometheus"):
            continue
        config_target = "/etc/prometheus/prometheus.yml"
        for arg in command_args(prom_service):
            if arg.startswith("--config.file="):
                config_target = arg.split("=", 1)[1]
        prom_config = next(
            (h for h, t in mounted_files(prom_service) if t == config_target), None
        )
        if prom_config is None or not os.path.isfile(prom_config):
            continue  # reported with the cluster's checks, or by docker compose
        with open(prom_config) as f:
            prom = yaml.safe_load(f) or {}
        targets = {
            target
            for manager in (prom.get("alerting") or {}).get("alertmanagers") or []
            for static in manager.get("static_configs") or []
            for target in static.get("targets") or []
        }
        if address not in targets:
            rel = os.path.relpath(prom_config, base)
            problems.append(f"{prom_name}: {rel} does not send alerts to {address}")
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
    problems = check(path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    with open(path) as f:
        services = yaml.safe_load(f)["services"]
    cluster = sorted(n for n, s in services.items() if PROFILE in (s.get("profiles") or []))
    print(f"{path}: plain stack {sorted(PLAIN_SERVICES)}; {PROFILE} profile {cluster}: ok")


if __name__ == "__main__":
    main()

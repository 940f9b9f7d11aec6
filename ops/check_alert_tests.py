#!/usr/bin/env python3
"""Checks that ops/alerts_test.yml tests every alert of ops/alerts.yml both ways: at some
eval_time it is expected to fire, and at another not to. (`promtool test rules` runs the tests
it is given; it does not notice a rule that has none.)

Usage: python3 ops/check_alert_tests.py [ops/alerts.yml ops/alerts_test.yml]   (needs PyYAML)
Exits 1 with one line per alert not tested both ways.
"""

import sys

import yaml


def main():
    rules_path, tests_path = sys.argv[1:3] if len(sys.argv) > 2 else (
        "ops/alerts.yml",
        "ops/alerts_test.yml",
    )
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    with open(tests_path) as f:
        tests = yaml.safe_load(f)
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    firing, quiet = set(), set()
    for group in tests.get("tests") or []:
        for case in group.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = []
    for alert in alerts:
        if alert not in firing:
            problems.append(f"{tests_path}: {alert} is never expected to fire")
        if alert not in quiet:
            problems.append(f"{tests_path}: {alert} is never expected not to fire")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{tests_path}: all {len(alerts)} alerts of {rules_path} tested firing and not: ok")


if __name__ == "__main__":
    main()

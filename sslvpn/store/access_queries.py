"""Groups, their members, access rules and the access policy's default (README "Access
policy"); every change bumps the policy's revision, which the gateways poll to reload."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from sslvpn.net.access import DEFAULTS, AccessError, AccessPolicy, Rule, validate_rule
from sslvpn.store import NotFoundError, RejectedError
from sslvpn.store.models import (
    AccessGroup,
    AccessPolicyState,
    AccessRule,
    GroupMember,
    Node,
    SpdPolicy,
    User,
    VpnTunnel,
    utcnow,
)
from sslvpn.store.queries import get_settings, get_user, record_audit
from sslvpn.store.rows import by_id, flush, insert

GROUP_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit trail."""

    name: str
    source_address: str | None = None


@dataclass(frozen=True)
class GroupRow:
    name: str
    members: list[str]
    rules: int


def _state(s: Session) -> AccessPolicyState:
    row = s.exec(select(AccessPolicyState)).first()
    if row is None:
        row = AccessPolicyState()
        s.add(row)
    return row


def _changed(s: Session, by: Actor, action: str, target: str, detail: str | None = None,
             ) -> None:
    """Bump the revision (the gateways reload) and audit the change."""
    state = _state(s)
    state.revision += 1
    state.updated_at = utcnow()
    record_audit(s, actor=by.name, action=action, target=target,
                 source_address=by.source_address, detail=detail)


def revision(s: Session) -> int:
    """The policy's revision (0 before any change): one indexed read per poll."""
    row = s.exec(select(AccessPolicyState.revision)).first()
    return row or 0


def get_group(s: Session, *, name: str) -> AccessGroup:
    group = s.exec(select(AccessGroup).where(AccessGroup.name == name)).first()
    if group is None:
        raise NotFoundError(f"no group named {name!r}")
    return group


def add_group(s: Session, *, name: str, by: Actor) -> AccessGroup:
    if not name or len(name) > 64 or not set(name) <= GROUP_NAME_CHARACTERS:
        raise RejectedError("a group name is 1-64 letters, digits, '.', '_' or '-'")
    group = insert(s, AccessGroup(name=name), f"group {name!r}")
    _changed(s, by, "group.add", name)
    return group


def delete_group(s: Session, *, name: str, by: Actor) -> None:
    """The group goes with its memberships and its rules."""
    s.delete(get_group(s, name=name))
    flush(s, f"group {name!r}")
    _changed(s, by, "group.delete", name)


def list_groups(s: Session) -> list[GroupRow]:
    members: dict[int, list[str]] = defaultdict(list)
    for group_id, user_name in s.exec(select(GroupMember.group_id, User.name).join(
            User, col(User.id) == GroupMember.user_id).order_by(User.name)):
        members[group_id].append(user_name)
    rules: dict[int, int] = defaultdict(int)
    for owner in s.exec(select(AccessRule.group_id).where(col(AccessRule.group_id).is_not(
            None))):
        rules[owner or 0] += 1
    return [GroupRow(g.name, members[g.id or 0], rules[g.id or 0])
            for g in s.exec(select(AccessGroup).order_by(AccessGroup.name))]


def groups_of(s: Session, *, user: str) -> list[str]:
    user_id = get_user(s, name=user).id
    return list(s.exec(select(AccessGroup.name).join(
        GroupMember, col(GroupMember.group_id) == AccessGroup.id).where(
        GroupMember.user_id == user_id).order_by(AccessGroup.name)))


def change_groups(s: Session, *, user: str, add: Sequence[str] = (),
                  remove: Sequence[str] = (), by: Actor) -> list[str]:
    """Put ``user`` into ``add`` and out of ``remove`` (unknown groups refused, nothing
    changed); returns the user's groups after."""
    user_id = get_user(s, name=user).id
    assert user_id is not None  # noqa: S101 (a stored row)
    adding = [get_group(s, name=name) for name in add]
    removing = [get_group(s, name=name) for name in remove]
    for group in removing:
        member = s.get(GroupMember, (group.id, user_id))
        if member is not None:
            s.delete(member)
    flush(s, "group membership")
    for group in adding:
        if s.get(GroupMember, (group.id, user_id)) is None:
            s.add(GroupMember(group_id=group.id or 0, user_id=user_id))
    flush(s, "group membership")
    _changed(s, by, "user.groups", user, f"add={','.join(add)} remove={','.join(remove)}")
    return groups_of(s, user=user)


def add_rule(s: Session, *, group: str | None = None, user: str | None = None,
             destination: str, protocol: str = "any", ports: str | None = None,
             allow: bool = True, priority: int = 100, gateway_name: str = "default",
             by: Actor) -> AccessRule:
    """A rule for exactly one of ``group`` and ``user``, checked against the gateway's VPC
    networks (RejectedError with the reason otherwise)."""
    if (group is None) == (user is None):
        raise RejectedError("a rule is for one group (--group) or one user (--user)")
    if not 0 <= priority <= 1_000_000:
        raise RejectedError("a priority is 0-1000000 (lower first)")
    vpc = [ipaddress.ip_network(n) for n in get_settings(s, name=gateway_name).vpc_networks]
    try:
        network, span = validate_rule(destination, protocol, ports, vpc)
    except AccessError as exc:
        raise RejectedError(str(exc)) from None
    rule = AccessRule(destination=str(network), protocol=protocol, allow=allow,
                      priority=priority, port_low=span[0] if span else None,
                      port_high=span[1] if span else None)
    if group is not None:
        rule.group_id = get_group(s, name=group).id
    else:
        rule.user_id = get_user(s, name=user or "").id
    insert(s, rule, "rule")
    _changed(s, by, "rule.add", str(rule.id), f"{group or user} {'allow' if allow else 'deny'} "
             f"{protocol} {network} ports={ports or '-'} priority={priority}")
    return rule


def delete_rule(s: Session, *, rule_id: int, by: Actor) -> None:
    rule = by_id(s, AccessRule, rule_id)
    if rule is None:
        raise NotFoundError(f"no rule {rule_id}")
    s.delete(rule)
    flush(s, f"rule {rule_id}")
    _changed(s, by, "rule.delete", str(rule_id))


def set_default(s: Session, *, default: str, by: Actor) -> None:
    if default not in DEFAULTS:
        raise RejectedError(f"the default is one of {', '.join(DEFAULTS)}")
    _state(s).default = default
    _changed(s, by, "policy.default", default)


def list_rules(s: Session) -> list[Rule]:
    """Every rule, in evaluation order, its owner spelled out."""
    groups = {g.id: g.name for g in s.exec(select(AccessGroup))}
    users = dict(s.exec(select(User.id, User.name).join(
        AccessRule, col(AccessRule.user_id) == User.id)).all())
    found = []
    for row in s.exec(select(AccessRule)):
        owner = (f"group {groups.get(row.group_id, '?')}" if row.group_id is not None
                 else f"user {users.get(row.user_id, '?')}")
        ports = (row.port_low, row.port_high or row.port_low) if row.port_low else None
        found.append(Rule(id=row.id or 0, network=ipaddress.ip_network(row.destination),
                          protocol=row.protocol, ports=ports, allow=row.allow,
                          priority=row.priority, owner=owner))
    return sorted(found, key=lambda r: r.order)


def load_policy(s: Session) -> AccessPolicy:
    """The whole policy, as the gateway compiles it (a few thousand rows at most)."""
    state = s.exec(select(AccessPolicyState)).first()
    group_rules: dict[str, list[Rule]] = defaultdict(list)
    user_rules: dict[str, list[Rule]] = defaultdict(list)
    for rule in list_rules(s):
        kind, _, name = rule.owner.partition(" ")
        (group_rules if kind == "group" else user_rules)[name].append(rule)
    members: dict[str, list[str]] = defaultdict(list)
    for user_name, group_name in s.exec(select(User.name, AccessGroup.name).join(
            GroupMember, col(GroupMember.user_id) == User.id).join(
            AccessGroup, col(AccessGroup.id) == GroupMember.group_id)):
        members[user_name].append(group_name)
    return AccessPolicy(default=state.default if state else "all-vpc",
                        group_rules=dict(group_rules), user_rules=dict(user_rules),
                        members=dict(members), revision=state.revision if state else 0)


@dataclass(frozen=True)
class Verdict:
    """`sslvpn policy check`'s answer: allow or deny, what decided, what would carry it."""

    allow: bool
    decided_by: str  # a rule's description, or the default, or "outside the VPC networks"
    rule_id: int | None
    route: str  # the VPC network, and the IPsec tunnel behind it if any
    nodes: list[str]  # the nodes a client may be on (each carries its own clients' packets)
    pushed: list[str]  # the routes this user is pushed at the next connect


def check(s: Session, *, user: str, protocol: int, address: ipaddress.IPv4Address
          | ipaddress.IPv6Address, port: int | None, gateway_name: str = "default",
          ) -> Verdict:
    """What the gateway decides for this user's packet: the same compiled lookup
    (`AccessPolicy.check`) as the data path, after the same VPC check."""
    get_user(s, name=user)
    vpc = [ipaddress.ip_network(n) for n in get_settings(s, name=gateway_name).vpc_networks]
    policy = load_policy(s)
    compiled = policy.compiled_for(user)
    pushed = [str(n) for n in (compiled.routes(vpc) if compiled is not None else vpc)]
    nodes = [n.name for n in s.exec(select(Node).order_by(Node.name))] or ["default"]
    inside = [n for n in vpc if address.version == n.version and address in n]
    if not inside:
        return Verdict(False, "outside the VPC networks (dropped as outside-vpc)", None,
                       "none", nodes, pushed)
    network = max(inside, key=lambda n: n.prefixlen)
    route = f"VPC network {network} through the gateway's TUN"
    for tunnel, spd in s.exec(select(VpnTunnel, SpdPolicy).join(
            SpdPolicy, col(SpdPolicy.tunnel_id) == VpnTunnel.id)):
        if address in ipaddress.ip_network(spd.peer_cidr, strict=False):
            owner = tunnel.owner_node or "no node yet"
            route += f", then IPsec tunnel {tunnel.name} (SPD {spd.local_cidr} <-> " \
                     f"{spd.peer_cidr}, owned by {owner})"
            break
    hit = policy.check(user, protocol, address, port)
    decided = hit.rule.describe() if hit.rule is not None else (
        f"the default ({'all VPC networks' if policy.default == 'all-vpc' else 'nothing'})")
    return Verdict(hit.allow, decided, hit.rule.id if hit.rule else None, route, nodes, pushed)

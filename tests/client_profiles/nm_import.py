"""Import .ovpn files with NetworkManager's own OpenVPN importer; print what it made, as JSON.

Runs under the system python3 (python3-gi and libnm's typelib are Debian packages, not in the
project's venv) and needs no NetworkManager daemon: libnm loads the network-manager-openvpn
editor plugin and calls its import, as `nmcli connection import type openvpn` would. The
importer copies inline certificates and keys to files under $HOME/.cert/nm-openvpn.
"""

import json
import sys

import gi

gi.require_version("NM", "1.0")
from gi.repository import NM  # noqa: E402


def _plugin() -> object:
    for info in NM.VpnPluginInfo.list_load():
        if info.get_name() == "openvpn":
            return info.load_editor_plugin()
    raise SystemExit("network-manager-openvpn is not installed (no openvpn VPN plugin)")


def _imported(plugin: object, path: str) -> dict[str, object]:
    connection = plugin.import_(path)
    vpn = connection.get_setting_vpn()
    return {
        "id": connection.get_id(),
        "service_type": vpn.get_service_type(),
        "data": {key: vpn.get_data_item(key) for key in vpn.get_data_keys()},
        "secrets": {key: vpn.get_secret(key) for key in vpn.get_secret_keys()},
    }


def main() -> None:
    plugin = _plugin()
    json.dump([_imported(plugin, path) for path in sys.argv[1:]], sys.stdout)


main()

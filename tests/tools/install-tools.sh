#!/bin/sh
# Installs the tools the deploy and end-to-end tests run for real: promtool and prometheus (Debian package
# `prometheus`), amtool and prometheus-alertmanager (package `prometheus-alertmanager`).
# Run by `make tools` before pytest. Installs only when a tool is missing, we are root and apt-get exists;
# otherwise it says loudly that the tests needing them will be skipped, and exits 0.
# The packages' services are never left running: their default ports (9090, 9093) would collide with the tests.
set -u

TOOLS="promtool amtool prometheus prometheus-alertmanager"
PACKAGES="prometheus prometheus-alertmanager"
# (the override exists for tests/test_image_and_tools.py, which runs this script against fake apt tools)
POLICY_RC=${INSTALL_TOOLS_POLICY_RC:-/usr/sbin/policy-rc.d}

missing_tools() {
    missing=""
    for tool in $TOOLS; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    echo "$missing"
}

# loud and apt_install, shared with the other install script (${0%/*}: no dirname on a minimal PATH)
case $0 in */*) . "${0%/*}/apt.sh" ;; *) . ./apt.sh ;; esac

missing=$(missing_tools)
if [ -z "$missing" ]; then
    echo "install-tools: promtool, amtool, prometheus and prometheus-alertmanager are installed"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    loud "install-tools: missing:$missing" \
        "Not root, so not installing them. The tests that need them will be SKIPPED." \
        "Install them with: sudo apt-get install --no-install-recommends $PACKAGES"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    loud "install-tools: missing:$missing" \
        "No apt-get on this machine, so not installing them. The tests that need them will FAIL as root" \
        "(or be skipped otherwise): install $PACKAGES (Prometheus 2.42+, Alertmanager 0.25+) by other means."
    exit 0
fi

# Keep the packages' maintainer scripts from starting their services: invoke-rc.d and deb-systemd-invoke obey
# policy-rc.d (exit 101 = "action forbidden"). An existing policy is left as it is.
created_policy=""
if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# installed by promo-monitor tests/tools/install-tools.sh for the duration of an install\nexit 101\n' >"$POLICY_RC"
    chmod 0755 "$POLICY_RC"
    created_policy=yes
fi
cleanup() {
    if [ -n "$created_policy" ]; then
        rm -f "$POLICY_RC"
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

echo "install-tools: installing $PACKAGES (missing:$missing)"
apt_install $PACKAGES

# If systemd runs (a VM rather than a container), make sure the packaged services are stopped and stay off.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for service in prometheus.service prometheus-alertmanager.service; do
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
elif [ -z "$created_policy" ]; then
    # a policy-rc.d that was not ours may have let the init scripts start them
    for service in prometheus prometheus-alertmanager; do
        if [ -x "/etc/init.d/$service" ]; then
            "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        fi
    done
fi

missing=$(missing_tools)
if [ -n "$missing" ]; then
    loud "install-tools: still missing after apt-get install:$missing" \
        "The deploy and end-to-end tests will FAIL: look at the apt-get output above."
    exit 1
fi

if command -v ss >/dev/null 2>&1 && ss -ltn 2>/dev/null | grep -Eq '[:.](9090|9093)[[:space:]]'; then
    loud "install-tools: something listens on port 9090 or 9093 (a Prometheus/Alertmanager service?)." \
        "The tests pick free ports, but stop that service if it was started by this install."
fi
echo "install-tools: installed $(promtool --version 2>&1 | head -n 1)"
echo "install-tools: installed $(amtool --version 2>&1 | head -n 1)"
exit 0

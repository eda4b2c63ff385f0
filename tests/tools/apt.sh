# What install-tools.sh and install-browser.sh share; they source it (POSIX sh, no commands beyond theirs).

# loud LINE...: a banner on stderr that a skipped or failing install cannot hide in the pytest output.
loud() {
    echo "##########################################################################################" >&2
    for line in "$@"; do
        echo "### $line" >&2
    done
    echo "##########################################################################################" >&2
}

# apt_install PACKAGE...: install them from Debian without recommends. `apt-get update` first only when the
# package lists know no candidate for one of them; once more, and a retry, when the install fails (the lists may
# be stale: a version no longer on the mirror).
apt_install() {
    for pkg in "$@"; do
        candidate=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            apt-get update || true
            break
        fi
    done
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
        apt-get update || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" || true
    fi
}

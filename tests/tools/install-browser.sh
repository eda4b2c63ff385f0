#!/bin/sh
# Installs headless Chromium from Debian (package `chromium`) and a sans-serif font for the status page's
# real-browser test (tests/test_status_browser.py). Playwright drives this Chromium through executable_path and
# never downloads a browser of its own. Run by `make tools` before pytest. Installs only when chromium is missing,
# we are root and apt-get exists; otherwise it says loudly that the browser test will be skipped, and exits 0.
set -u

PACKAGES="chromium fonts-liberation"

loud() {
    echo "##########################################################################################" >&2
    for line in "$@"; do
        echo "### $line" >&2
    done
    echo "##########################################################################################" >&2
}

FONTS=/usr/share/fonts/truetype/liberation
if command -v chromium >/dev/null 2>&1 && [ -d "$FONTS" ]; then
    echo "install-browser: chromium is installed ($(command -v chromium))"
    exit 0
fi
if [ "$(id -u)" != "0" ] && command -v chromium >/dev/null 2>&1; then
    echo "install-browser: chromium is installed; fonts-liberation is not (screenshots use another font)"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    loud "install-browser: chromium is missing and we are not root, so not installing it." \
        "The real-browser test of the status page will be SKIPPED." \
        "Install it with: sudo apt-get install --no-install-recommends $PACKAGES"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    loud "install-browser: chromium is missing and there is no apt-get on this machine." \
        "The real-browser test of the status page will FAIL as root: install Chromium by other means."
    exit 0
fi

candidate=$(apt-cache policy chromium 2>/dev/null | sed -n 's/^ *Candidate: *//p')
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    apt-get update || true
fi
echo "install-browser: installing $PACKAGES"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES; then
    # the package lists may be stale (a version no longer on the mirror): refresh once and retry
    apt-get update || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES || true
fi
if ! command -v chromium >/dev/null 2>&1; then
    loud "install-browser: chromium is still missing after apt-get install." \
        "The real-browser test of the status page will FAIL: look at the apt-get output above."
    exit 1
fi
echo "install-browser: installed chromium ($(command -v chromium))"
exit 0

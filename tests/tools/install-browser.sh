#!/bin/sh
# Installs headless Chromium from Debian (package `chromium`) and a sans-serif font for the status page's
# real-browser test (tests/test_status_browser.py). Playwright drives this Chromium through executable_path and
# never downloads a browser of its own. Run by `make tools` before pytest. Installs only when chromium is missing,
# we are root and apt-get exists; otherwise it says loudly that the browser test will be skipped, and exits 0.
set -u

PACKAGES="chromium fonts-liberation"

# loud and apt_install, shared with the other install script (${0%/*}: no dirname on a minimal PATH)
case $0 in */*) . "${0%/*}/apt.sh" ;; *) . ./apt.sh ;; esac

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

echo "install-browser: installing $PACKAGES"
apt_install $PACKAGES
if ! command -v chromium >/dev/null 2>&1; then
    loud "install-browser: chromium is still missing after apt-get install." \
        "The real-browser test of the status page will FAIL: look at the apt-get output above."
    exit 1
fi
echo "install-browser: installed chromium ($(command -v chromium))"
exit 0

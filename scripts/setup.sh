# Sourced by scripts/test and scripts/lab: system packages (as root, when missing), then a
# virtualenv in .venv with p2pwall and the example detector installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
need=()
for tool in iptables:iptables ipset:ipset ip:iproute2 ping:iputils-ping setpriv:util-linux tcpdump:tcpdump openssl:openssl \
            aria2c:aria2 opentracker:opentracker transmission-create:transmission-cli \
            hping3:hping3 iperf3:iperf3 ndpiReader:libndpi-bin redis-server:redis-server redis-sentinel:redis-sentinel curl:curl nft:nftables stunnel4:stunnel4 chromium:chromium \
            ss-server:shadowsocks-libev sshd:openssh-server ssh:openssh-client openvpn:openvpn \
            tor:tor obfs4proxy:obfs4proxy amuled:amule-daemon amulecmd:amule-utils alcc:amule-utils; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
command -v gcc >/dev/null 2>&1 || need+=(build-essential)
# libtorrent-rasterbar for the real-client e2e tests, driven by the system's python3
/usr/bin/python3 -c 'import libtorrent' >/dev/null 2>&1 || need+=(python3-libtorrent)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages (install as root): ${need[*]}" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,cluster]' -e examples/p2pwall-directconnect -e lab

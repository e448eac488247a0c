#!/usr/bin/env bash
# ab-compact.sh on ports below this VM's ephemeral range (10000-65535), where no client socket
# can hold them.
exec env PORT=9660 "$(dirname "$0")/ab-compact.sh"

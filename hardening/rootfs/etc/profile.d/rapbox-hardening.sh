# rapbox shell defaults (controls 10 and 11): idle interactive shells end after
# 900 s, new files are not readable by others.
TMOUT=900
readonly TMOUT
export TMOUT
umask 027

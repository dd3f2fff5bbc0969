# rapbox shell defaults: idle timeout, restrictive umask
TMOUT=900
readonly TMOUT
export TMOUT
umask 027

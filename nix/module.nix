# services.tailpass: tailpass as a hardened systemd service.
#
#   services.tailpass = {
#     enable = true;
#     settings = {
#       node = [{
#         hostname = "gate";
#         state_dir = "/var/lib/tailpass/gate";
#         auth_key = { file = "/run/credentials/tailpass.service/ts-authkey"; };
#       }];
#       route = [{ path = "/"; upstream = "http://127.0.0.1:4000"; }];
#     };
#     credentials.ts-authkey = "/run/secrets/ts-authkey";   # not in the store
#   };
#
# Secrets never go into `settings` (the generated file is world-readable in
# the Nix store): the config names them as `{ env = "NAME"; }` with
# `environmentFile`, or `{ file = "/run/credentials/tailpass.service/NAME"; }`
# with `credentials`.
{ self }:
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.tailpass;
  toml = pkgs.formats.toml { };
  configFile =
    if cfg.configFile != null then cfg.configFile else toml.generate "tailpass.toml" cfg.settings;
  exe = lib.getExe cfg.package;
  stateRoot = "/var/lib/tailpass";
in
{
  options.services.tailpass = {
    enable = lib.mkEnableOption "tailpass, passkey single sign-on for private web services on a Tailscale network";

    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "tailpass.packages.\${system}.default";
      description = "The tailpass package.";
    };

    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = ''
        tailpass.toml (see the README's configuration reference) as Nix.
        Node `state_dir`s belong under ${stateRoot}/, the service's state
        directory: the rest of the file system is read-only to it. No
        secrets here: use `{ env = "NAME"; }` or `{ file = "..."; }`.
        Ignored when `configFile` is set.
      '';
    };

    configFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/etc/tailpass/tailpass.toml";
      description = "A tailpass.toml to use instead of one generated from `settings`.";
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/tailpass.env";
      description = ''
        A file of `NAME=value` lines (systemd's EnvironmentFile=), read by
        systemd as root, for secrets the config names as `{ env = "NAME"; }`
        (TS_AUTHKEY, TAILPASS_SESSION_SECRET, client secrets). Give it as a
        string so it is not copied into the store.
      '';
    };

    credentials = lib.mkOption {
      type = lib.types.attrsOf lib.types.path;
      default = { };
      example = {
        ts-authkey = "/run/secrets/ts-authkey";
        session-secret = "/run/secrets/tailpass-session";
      };
      description = ''
        Files handed to the service with systemd's LoadCredential=: each
        NAME is readable by the service (and no one else) at
        /run/credentials/tailpass.service/NAME, the path to use in
        `{ file = "..."; }`. The source files can stay root-only.
      '';
    };

    logFormat = lib.mkOption {
      type = lib.types.enum [
        "text"
        "json"
      ];
      default = "text";
      description = "Log format (`--log-format`).";
    };

    bindPrivilegedPorts = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Grant CAP_NET_BIND_SERVICE, for a `public.listen` or
        `loopback.listen` below port 1024 (e.g. 0.0.0.0:443). The tailnet
        side needs no capability: tsnet is a userspace network stack.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.configFile != null || cfg.settings != { };
        message = "services.tailpass: set `settings` or `configFile`.";
      }
    ];

    warnings = lib.optionals (cfg.configFile == null) (
      map (n: "services.tailpass: node ${n.hostname or "?"}: state_dir should be under ${stateRoot}/ (the only writable place)")
        (lib.filter (n: !(lib.hasPrefix "${stateRoot}/" (n.state_dir or ""))) (cfg.settings.node or [ ]))
    );

    systemd.services.tailpass = {
      description = "tailpass: passkey single sign-on on a Tailscale network";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = {
        ExecStart = "${exe} --log-format ${cfg.logFormat} run --config ${configFile}";
        # Validate first, so a broken config edited in place (configFile)
        # fails the reload rather than the service.
        ExecReload = [
          "${exe} --log-format ${cfg.logFormat} check --config ${configFile}"
          "${pkgs.coreutils}/bin/kill -HUP $MAINPID"
        ];
        # SIGHUP reloads routes, policies and providers in place (an invalid
        # file is refused and the running configuration kept).
        Restart = "on-failure";
        RestartPreventExitStatus = "64";
        RestartSec = "5s";

        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;

        DynamicUser = true;
        StateDirectory = "tailpass";
        StateDirectoryMode = "0700";
        WorkingDirectory = stateRoot;
        UMask = "0077";
        LimitNOFILE = 65536;

        # Hardening. The tailnet is tsnet's userspace stack: no TUN device,
        # no capabilities; netlink is for its network monitor.
        AmbientCapabilities = lib.optional cfg.bindPrivilegedPorts "CAP_NET_BIND_SERVICE";
        CapabilityBoundingSet = if cfg.bindPrivilegedPorts then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible"; # not ProcSubset=pid: tailscale reads /proc/net/route
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}

#!/usr/bin/env python3
"""Generate src/config/subset/tables.rs: the xDS subset (docs/xds-subset.md) as
tables of allowed fields per Envoy message, with field numbers and every field
name of each message (for error paths), so the proxy checks resources on the
wire format without loading Envoy's descriptor pool (~50 MB).

    cargo run -p proxy --example descriptor_fields > /tmp/fields.txt
    python3 crates/proxy/tools/gen_subset_tables.py crates/proxy/src/config/subset/tables.rs /tmp/fields.txt
    cargo fmt -p proxy
"""
import collections, sys
fields = collections.defaultdict(dict)  # msg -> name -> (num, kind, label)
for line in open(sys.argv[2] if len(sys.argv) > 2 else '/tmp/fields.txt'):
    m, name, num, kind, label = line.split()
    fields[m][name] = (int(num), kind, label)

L = 'L'
def M(t): return ('M', t)
def A(*ts): return ('A', list(ts))
def AM(*ts): return ('AM', list(ts))

HCM_T='envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
TCP_T='envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'
OD_T='envoy.extensions.filters.listener.original_dst.v3.OriginalDst'
HI_T='envoy.extensions.filters.listener.http_inspector.v3.HttpInspector'
HPO_T='envoy.extensions.upstreams.http.v3.HttpProtocolOptions'
ROUTER_T='envoy.extensions.filters.http.router.v3.Router'
FAULT_T='envoy.extensions.filters.http.fault.v3.HTTPFault'
CORS_T='envoy.extensions.filters.http.cors.v3.Cors'
CORS_POLICY_T='envoy.extensions.filters.http.cors.v3.CorsPolicy'
PP_T='envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig'
PH_T='envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate'
RAW_BUFFER_T='envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer'
TLS='envoy.extensions.transport_sockets.tls.v3.'
UP_TLS_T=TLS+'UpstreamTlsContext'
DOWN_TLS_T=TLS+'DownstreamTlsContext'
TI_T='envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector'
RBAC_HTTP_T='envoy.extensions.filters.http.rbac.v3.RBAC'
RBAC_PER_ROUTE_T='envoy.extensions.filters.http.rbac.v3.RBACPerRoute'
RBAC_NET_T='envoy.extensions.filters.network.rbac.v3.RBAC'
JWT_T='envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication'
JWT='envoy.extensions.filters.http.jwt_authn.v3.'
URI_TEMPLATE_T='envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig'
EXT_AUTHZ_HTTP_T='envoy.extensions.filters.http.ext_authz.v3.ExtAuthz'
EXT_AUTHZ_NET_T='envoy.extensions.filters.network.ext_authz.v3.ExtAuthz'

# name -> (message, [(field, kind)]), in dependency order
T = collections.OrderedDict()
T['SOCKET_ADDRESS']=('envoy.config.core.v3.SocketAddress',[('address',L),('port_value',L),('protocol',L)])
T['PIPE']=('envoy.config.core.v3.Pipe',[('path',L),('mode',L)])
T['ADDRESS']=('envoy.config.core.v3.Address',[('socket_address',M('SOCKET_ADDRESS')),('pipe',M('PIPE'))])
T['CIDR']=('envoy.config.core.v3.CidrRange',[('address_prefix',L),('prefix_len',L)])
T['FILTER_CHAIN_MATCH']=('envoy.config.listener.v3.FilterChainMatch',[('destination_port',L),('prefix_ranges',M('CIDR')),('server_names',L),('application_protocols',L),('transport_protocol',L)])
T['AGGREGATED_CONFIG_SOURCE']=('envoy.config.core.v3.AggregatedConfigSource',[])
T['CONFIG_SOURCE']=('envoy.config.core.v3.ConfigSource',[('ads',M('AGGREGATED_CONFIG_SOURCE')),('resource_api_version',L),('initial_fetch_timeout',L)])
T['REGEX']=('envoy.type.matcher.v3.RegexMatcher',[('regex',L),('google_re2',L)])
T['STRING_MATCHER']=('envoy.type.matcher.v3.StringMatcher',[('exact',L),('prefix',L),('suffix',L),('contains',L),('safe_regex',M('REGEX')),('ignore_case',L)])
T['HEADER_MATCHER']=('envoy.config.route.v3.HeaderMatcher',[('name',L),('string_match',M('STRING_MATCHER')),('present_match',L),('invert_match',L),('exact_match',L),('prefix_match',L),('suffix_match',L),('contains_match',L),('safe_regex_match',M('REGEX')),('treat_missing_header_as_empty',L)])
T['QUERY_MATCHER']=('envoy.config.route.v3.QueryParameterMatcher',[('name',L),('string_match',M('STRING_MATCHER')),('present_match',L)])
T['ROUTE_MATCH']=('envoy.config.route.v3.RouteMatch',[('prefix',L),('path',L),('safe_regex',M('REGEX')),('case_sensitive',L),('headers',M('HEADER_MATCHER')),('query_parameters',M('QUERY_MATCHER'))])
T['HEADER_VALUE']=('envoy.config.core.v3.HeaderValue',[('key',L),('value',L)])
T['HEADER_VALUE_OPTION']=('envoy.config.core.v3.HeaderValueOption',[('header',M('HEADER_VALUE')),('append',L),('append_action',L),('keep_empty_value',L)])
HEADER_OPS=[('request_headers_to_add',M('HEADER_VALUE_OPTION')),('request_headers_to_remove',L),('response_headers_to_add',M('HEADER_VALUE_OPTION')),('response_headers_to_remove',L)]
T['FRACTIONAL_PERCENT']=('envoy.type.v3.FractionalPercent',[('numerator',L),('denominator',L)])
T['FAULT_DELAY']=('envoy.extensions.filters.common.fault.v3.FaultDelay',[('fixed_delay',L),('percentage',M('FRACTIONAL_PERCENT'))])
T['FAULT_ABORT']=('envoy.extensions.filters.http.fault.v3.FaultAbort',[('http_status',L),('grpc_status',L),('percentage',M('FRACTIONAL_PERCENT'))])
T['FAULT']=(FAULT_T,[('delay',M('FAULT_DELAY')),('abort',M('FAULT_ABORT'))])
T['RUNTIME_FRACTION']=('envoy.config.core.v3.RuntimeFractionalPercent',[('default_value',M('FRACTIONAL_PERCENT'))])
T['CORS']=(CORS_T,[])
T['CORS_POLICY']=(CORS_POLICY_T,[('allow_origin_string_match',M('STRING_MATCHER')),('allow_methods',L),('allow_headers',L),('expose_headers',L),('max_age',L),('allow_credentials',L),('filter_enabled',M('RUNTIME_FRACTION')),('forward_not_matching_preflights',L)])
T['CLUSTER_WEIGHT']=('envoy.config.route.v3.WeightedCluster.ClusterWeight',[('name',L),('weight',L)]+HEADER_OPS)
T['WEIGHTED_CLUSTERS']=('envoy.config.route.v3.WeightedCluster',[('clusters',M('CLUSTER_WEIGHT')),('total_weight',L)])
T['PREVIOUS_HOSTS']=(PH_T,[])
T['RETRY_HOST_PREDICATE']=('envoy.config.route.v3.RetryPolicy.RetryHostPredicate',[('name',L),('typed_config',A((PH_T,'PREVIOUS_HOSTS')))])
T['PREVIOUS_PRIORITIES']=(PP_T,[('update_frequency',L)])
T['RETRY_PRIORITY']=('envoy.config.route.v3.RetryPolicy.RetryPriority',[('name',L),('typed_config',A((PP_T,'PREVIOUS_PRIORITIES')))])
T['MIRROR_POLICY']=('envoy.config.route.v3.RouteAction.RequestMirrorPolicy',[('cluster',L),('runtime_fraction',M('RUNTIME_FRACTION')),('trace_sampled',L)])
T['RETRY_BACK_OFF']=('envoy.config.route.v3.RetryPolicy.RetryBackOff',[('base_interval',L),('max_interval',L)])
T['RETRY_POLICY']=('envoy.config.route.v3.RetryPolicy',[('retry_on',L),('num_retries',L),('per_try_timeout',L),('retry_host_predicate',M('RETRY_HOST_PREDICATE')),('retry_priority',M('RETRY_PRIORITY')),('host_selection_retry_max_attempts',L),('retriable_status_codes',L),('retry_back_off',M('RETRY_BACK_OFF'))])
T['REGEX_REWRITE']=('envoy.type.matcher.v3.RegexMatchAndSubstitute',[('pattern',M('REGEX')),('substitution',L)])
T['MAX_STREAM_DURATION']=('envoy.config.route.v3.RouteAction.MaxStreamDuration',[('max_stream_duration',L),('grpc_timeout_header_max',L)])
T['ROUTE_ACTION']=('envoy.config.route.v3.RouteAction',[('cluster',L),('weighted_clusters',M('WEIGHTED_CLUSTERS')),('timeout',L),('retry_policy',M('RETRY_POLICY')),('prefix_rewrite',L),('regex_rewrite',M('REGEX_REWRITE')),('host_rewrite_literal',L),('max_grpc_timeout',L),('max_stream_duration',M('MAX_STREAM_DURATION')),('request_mirror_policies',M('MIRROR_POLICY')),('hash_policy',M('HASH_POLICY'))])
HP='envoy.config.route.v3.RouteAction.HashPolicy'
T['HASH_HEADER']=(HP+'.Header',[('header_name',L)])
T['HASH_COOKIE']=(HP+'.Cookie',[('name',L),('ttl',L),('path',L)])
T['HASH_CONNECTION']=(HP+'.ConnectionProperties',[('source_ip',L)])
T['HASH_QUERY']=(HP+'.QueryParameter',[('name',L)])
T['HASH_POLICY']=(HP,[('header',M('HASH_HEADER')),('cookie',M('HASH_COOKIE')),('connection_properties',M('HASH_CONNECTION')),('query_parameter',M('HASH_QUERY')),('terminal',L)])
T['REDIRECT_ACTION']=('envoy.config.route.v3.RedirectAction',[('host_redirect',L),('path_redirect',L),('response_code',L),('https_redirect',L),('prefix_rewrite',L),('strip_query',L),('scheme_redirect',L),('port_redirect',L)])
T['DATA_SOURCE']=('envoy.config.core.v3.DataSource',[('inline_bytes',L),('inline_string',L)])
T['DIRECT_RESPONSE_ACTION']=('envoy.config.route.v3.DirectResponseAction',[('status',L),('body',M('DATA_SOURCE'))])
# RBAC (envoy.filters.http.rbac, envoy.filters.network.rbac) and jwt_authn.
T['PATH_MATCHER']=('envoy.type.matcher.v3.PathMatcher',[('path',M('STRING_MATCHER'))])
T['DOUBLE_RANGE']=('envoy.type.v3.DoubleRange',[('start',L),('end',L)])
T['DOUBLE_MATCHER']=('envoy.type.matcher.v3.DoubleMatcher',[('range',M('DOUBLE_RANGE')),('exact',L)])
T['LIST_MATCHER']=('envoy.type.matcher.v3.ListMatcher',[('one_of',M('VALUE_MATCHER'))])
T['OR_MATCHER']=('envoy.type.matcher.v3.OrMatcher',[('value_matchers',M('VALUE_MATCHER'))])
T['NULL_MATCH']=('envoy.type.matcher.v3.ValueMatcher.NullMatch',[])
T['VALUE_MATCHER']=('envoy.type.matcher.v3.ValueMatcher',[('null_match',M('NULL_MATCH')),('double_match',M('DOUBLE_MATCHER')),('string_match',M('STRING_MATCHER')),('bool_match',L),('present_match',L),('list_match',M('LIST_MATCHER')),('or_match',M('OR_MATCHER'))])
T['METADATA_PATH_SEGMENT']=('envoy.type.matcher.v3.MetadataMatcher.PathSegment',[('key',L)])
T['METADATA_MATCHER']=('envoy.type.matcher.v3.MetadataMatcher',[('filter',L),('path',M('METADATA_PATH_SEGMENT')),('value',M('VALUE_MATCHER')),('invert',L)])
T['URI_TEMPLATE']=(URI_TEMPLATE_T,[('path_template',L)])
T['URI_TEMPLATE_EXT']=('envoy.config.core.v3.TypedExtensionConfig',[('name',L),('typed_config',A((URI_TEMPLATE_T,'URI_TEMPLATE')))])
T['PERMISSION_SET']=('envoy.config.rbac.v3.Permission.Set',[('rules',M('PERMISSION'))])
T['PERMISSION']=('envoy.config.rbac.v3.Permission',[('and_rules',M('PERMISSION_SET')),('or_rules',M('PERMISSION_SET')),('any',L),('header',M('HEADER_MATCHER')),('url_path',M('PATH_MATCHER')),('destination_ip',M('CIDR')),('destination_port',L),('destination_port_range',M('PORT_RANGE')),('metadata',M('METADATA_MATCHER')),('not_rule',M('PERMISSION')),('requested_server_name',M('STRING_MATCHER')),('uri_template',M('URI_TEMPLATE_EXT'))])
T['PRINCIPAL_SET']=('envoy.config.rbac.v3.Principal.Set',[('ids',M('PRINCIPAL'))])
T['AUTHENTICATED']=('envoy.config.rbac.v3.Principal.Authenticated',[('principal_name',M('STRING_MATCHER'))])
T['PRINCIPAL']=('envoy.config.rbac.v3.Principal',[('and_ids',M('PRINCIPAL_SET')),('or_ids',M('PRINCIPAL_SET')),('any',L),('authenticated',M('AUTHENTICATED')),('source_ip',M('CIDR')),('direct_remote_ip',M('CIDR')),('remote_ip',M('CIDR')),('header',M('HEADER_MATCHER')),('url_path',M('PATH_MATCHER')),('metadata',M('METADATA_MATCHER')),('not_id',M('PRINCIPAL'))])
T['RBAC_POLICY']=('envoy.config.rbac.v3.Policy',[('permissions',M('PERMISSION')),('principals',M('PRINCIPAL'))])
T['RBAC_POLICIES_ENTRY']=('envoy.config.rbac.v3.RBAC.PoliciesEntry',[('key',L),('value',M('RBAC_POLICY'))])
T['RBAC_RULES']=('envoy.config.rbac.v3.RBAC',[('action',L),('policies',M('RBAC_POLICIES_ENTRY'))])
T['RBAC_HTTP']=(RBAC_HTTP_T,[('rules',M('RBAC_RULES')),('rules_stat_prefix',L),('shadow_rules',M('RBAC_RULES')),('shadow_rules_stat_prefix',L)])
T['RBAC_PER_ROUTE']=(RBAC_PER_ROUTE_T,[('rbac',M('RBAC_HTTP'))])
T['RBAC_NETWORK']=(RBAC_NET_T,[('rules',M('RBAC_RULES')),('shadow_rules',M('RBAC_RULES')),('shadow_rules_stat_prefix',L),('stat_prefix',L),('enforcement_type',L)])
T['EXT_AUTHZ_ENVOY_GRPC']=('envoy.config.core.v3.GrpcService.EnvoyGrpc',[('cluster_name',L),('authority',L)])
T['EXT_AUTHZ_GRPC_SERVICE']=('envoy.config.core.v3.GrpcService',[('envoy_grpc',M('EXT_AUTHZ_ENVOY_GRPC')),('timeout',L)])
T['HTTP_STATUS']=('envoy.type.v3.HttpStatus',[('code',L)])
T['EXT_AUTHZ_HTTP']=(EXT_AUTHZ_HTTP_T,[('grpc_service',M('EXT_AUTHZ_GRPC_SERVICE')),('transport_api_version',L),('failure_mode_allow',L),('status_on_error',M('HTTP_STATUS')),('filter_enabled_metadata',M('METADATA_MATCHER')),('stat_prefix',L),('include_peer_certificate',L)])
T['EXT_AUTHZ_NETWORK']=(EXT_AUTHZ_NET_T,[('grpc_service',M('EXT_AUTHZ_GRPC_SERVICE')),('transport_api_version',L),('failure_mode_allow',L),('filter_enabled_metadata',M('METADATA_MATCHER')),('stat_prefix',L),('include_peer_certificate',L)])
T['JWT_HEADER']=(JWT+'JwtHeader',[('name',L),('value_prefix',L)])
T['JWT_CLAIM_TO_HEADER']=(JWT+'JwtClaimToHeader',[('header_name',L),('claim_name',L)])
T['JWT_PROVIDER']=(JWT+'JwtProvider',[('issuer',L),('audiences',L),('local_jwks',M('DATA_SOURCE')),('forward',L),('from_headers',M('JWT_HEADER')),('from_params',L),('from_cookies',L),('forward_payload_header',L),('pad_forward_payload_header',L),('payload_in_metadata',L),('clock_skew_seconds',L),('claim_to_headers',M('JWT_CLAIM_TO_HEADER'))])
T['JWT_PROVIDERS_ENTRY']=(JWT_T+'.ProvidersEntry',[('key',L),('value',M('JWT_PROVIDER'))])
T['JWT_REQUIREMENT_OR_LIST']=(JWT+'JwtRequirementOrList',[('requirements',M('JWT_REQUIREMENT'))])
T['JWT_REQUIREMENT_AND_LIST']=(JWT+'JwtRequirementAndList',[('requirements',M('JWT_REQUIREMENT'))])
T['JWT_REQUIREMENT']=(JWT+'JwtRequirement',[('provider_name',L),('requires_any',M('JWT_REQUIREMENT_OR_LIST')),('requires_all',M('JWT_REQUIREMENT_AND_LIST')),('allow_missing_or_failed',L),('allow_missing',L)])
T['JWT_RULE']=(JWT+'RequirementRule',[('match',M('ROUTE_MATCH')),('requires',M('JWT_REQUIREMENT'))])
T['JWT_AUTHN']=(JWT_T,[('providers',M('JWT_PROVIDERS_ENTRY')),('rules',M('JWT_RULE')),('bypass_cors_preflight',L)])
T['ROUTE']=('envoy.config.route.v3.Route',[('name',L),('match',M('ROUTE_MATCH')),('route',M('ROUTE_ACTION')),('redirect',M('REDIRECT_ACTION')),('direct_response',M('DIRECT_RESPONSE_ACTION')),('metadata',L),('typed_per_filter_config',AM((FAULT_T,'FAULT'),(CORS_POLICY_T,'CORS_POLICY'),(RBAC_PER_ROUTE_T,'RBAC_PER_ROUTE')))]+HEADER_OPS)
T['VIRTUAL_HOST']=('envoy.config.route.v3.VirtualHost',[('name',L),('domains',L),('routes',M('ROUTE')),('retry_policy',M('RETRY_POLICY')),('include_request_attempt_count',L),('include_attempt_count_in_response',L)])
T['ROUTE_CONFIGURATION']=('envoy.config.route.v3.RouteConfiguration',[('name',L),('virtual_hosts',M('VIRTUAL_HOST')),('validate_clusters',L)])
T['RDS']=('envoy.extensions.filters.network.http_connection_manager.v3.Rds',[('config_source',M('CONFIG_SOURCE')),('route_config_name',L)])
T['ROUTER']=(ROUTER_T,[])
T['HTTP_FILTER']=('envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter',[('name',L),('typed_config',A((ROUTER_T,'ROUTER'),(FAULT_T,'FAULT'),(CORS_T,'CORS'),(RBAC_HTTP_T,'RBAC_HTTP'),(JWT_T,'JWT_AUTHN'),(EXT_AUTHZ_HTTP_T,'EXT_AUTHZ_HTTP')))])
T['UPGRADE_CONFIG']=('envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig',[('upgrade_type',L),('enabled',L)])
T['SET_CURRENT_CERT']=(HCM_T+'.SetCurrentClientCertDetails',[('subject',L),('dns',L),('uri',L)])
T['INTERNAL_ADDRESS_CONFIG']=('envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig',[('unix_sockets',L),('cidr_ranges',M('CIDR'))])
T['HCM']=(HCM_T,[('forward_client_cert_details',L),('set_current_client_cert_details',M('SET_CURRENT_CERT')),('stat_prefix',L),('codec_type',L),('rds',M('RDS')),('route_config',M('ROUTE_CONFIGURATION')),('http_filters',M('HTTP_FILTER')),('upgrade_configs',M('UPGRADE_CONFIG')),('use_remote_address',L),('normalize_path',L),('merge_slashes',L),('path_with_escaped_slashes_action',L),('internal_address_config',M('INTERNAL_ADDRESS_CONFIG'))])
T['TCP_CLUSTER_WEIGHT']=('envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight',[('name',L),('weight',L)])
T['TCP_WEIGHTED_CLUSTERS']=('envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster',[('clusters',M('TCP_CLUSTER_WEIGHT'))])
T['TCP_PROXY']=(TCP_T,[('stat_prefix',L),('cluster',L),('weighted_clusters',M('TCP_WEIGHTED_CLUSTERS'))])
T['NETWORK_FILTER']=('envoy.config.listener.v3.Filter',[('name',L),('typed_config',A((HCM_T,'HCM'),(TCP_T,'TCP_PROXY'),(RBAC_NET_T,'RBAC_NETWORK'),(EXT_AUTHZ_NET_T,'EXT_AUTHZ_NETWORK')))])
T['RAW_BUFFER']=(RAW_BUFFER_T,[])
T['FILE_DATA_SOURCE']=('envoy.config.core.v3.DataSource',[('filename',L),('inline_bytes',L),('inline_string',L)])
T['TLS_PARAMS']=(TLS+'TlsParameters',[('tls_minimum_protocol_version',L),('tls_maximum_protocol_version',L),('cipher_suites',L),('ecdh_curves',L)])
T['TLS_CERTIFICATE']=(TLS+'TlsCertificate',[('certificate_chain',M('FILE_DATA_SOURCE')),('private_key',M('FILE_DATA_SOURCE'))])
T['SDS_CONFIG_SOURCE']=('envoy.config.core.v3.ConfigSource',[('ads',M('AGGREGATED_CONFIG_SOURCE')),('api_config_source',M('API_CONFIG_SOURCE')),('resource_api_version',L),('initial_fetch_timeout',L)])
T['SDS_SECRET_CONFIG']=(TLS+'SdsSecretConfig',[('name',L),('sds_config',M('SDS_CONFIG_SOURCE'))])
T['SAN_MATCHER']=(TLS+'SubjectAltNameMatcher',[('san_type',L),('matcher',M('STRING_MATCHER'))])
T['VALIDATION_CONTEXT']=(TLS+'CertificateValidationContext',[('trusted_ca',M('FILE_DATA_SOURCE')),('match_typed_subject_alt_names',M('SAN_MATCHER')),('match_subject_alt_names',M('STRING_MATCHER')),('trust_chain_verification',L)])
T['COMBINED_VALIDATION']=(TLS+'CommonTlsContext.CombinedCertificateValidationContext',[('default_validation_context',M('VALIDATION_CONTEXT')),('validation_context_sds_secret_config',M('SDS_SECRET_CONFIG'))])
T['COMMON_TLS_CONTEXT']=(TLS+'CommonTlsContext',[('tls_params',M('TLS_PARAMS')),('tls_certificates',M('TLS_CERTIFICATE')),('tls_certificate_sds_secret_configs',M('SDS_SECRET_CONFIG')),('alpn_protocols',L),('validation_context',M('VALIDATION_CONTEXT')),('validation_context_sds_secret_config',M('SDS_SECRET_CONFIG')),('combined_validation_context',M('COMBINED_VALIDATION'))])
T['UPSTREAM_TLS']=(UP_TLS_T,[('common_tls_context',M('COMMON_TLS_CONTEXT')),('sni',L)])
T['DOWNSTREAM_TLS']=(DOWN_TLS_T,[('common_tls_context',M('COMMON_TLS_CONTEXT')),('require_client_certificate',L)])
T['TRANSPORT_SOCKET']=('envoy.config.core.v3.TransportSocket',[('name',L),('typed_config',A((RAW_BUFFER_T,'RAW_BUFFER'),(UP_TLS_T,'UPSTREAM_TLS'),(DOWN_TLS_T,'DOWNSTREAM_TLS')))])
T['FILTER_CHAIN']=('envoy.config.listener.v3.FilterChain',[('filter_chain_match',M('FILTER_CHAIN_MATCH')),('filters',M('NETWORK_FILTER')),('name',L),('metadata',L),('transport_socket',M('TRANSPORT_SOCKET')),('transport_socket_connect_timeout',L)])
T['ORIGINAL_DST']=(OD_T,[])
T['HTTP_INSPECTOR']=(HI_T,[])
T['TLS_INSPECTOR']=(TI_T,[])
T['PORT_RANGE']=('envoy.type.v3.Int32Range',[('start',L),('end',L)])
T['LF_PREDICATE_SET']=('envoy.config.listener.v3.ListenerFilterChainMatchPredicate.MatchSet',[('rules',M('LF_PREDICATE'))])
T['LF_PREDICATE']=('envoy.config.listener.v3.ListenerFilterChainMatchPredicate',[('or_match',M('LF_PREDICATE_SET')),('and_match',M('LF_PREDICATE_SET')),('not_match',M('LF_PREDICATE')),('any_match',L),('destination_port_range',M('PORT_RANGE'))])
T['LISTENER_FILTER']=('envoy.config.listener.v3.ListenerFilter',[('name',L),('typed_config',A((OD_T,'ORIGINAL_DST'),(HI_T,'HTTP_INSPECTOR'),(TI_T,'TLS_INSPECTOR'))),('filter_disabled',M('LF_PREDICATE'))])
T['LISTENER']=('envoy.config.listener.v3.Listener',[('name',L),('address',M('ADDRESS')),('bind_to_port',L),('use_original_dst',L),('traffic_direction',L),('stat_prefix',L),('metadata',L),('listener_filters',M('LISTENER_FILTER')),('listener_filters_timeout',L),('continue_on_listener_filters_timeout',L),('filter_chains',M('FILTER_CHAIN')),('default_filter_chain',M('FILTER_CHAIN'))])
T['ENDPOINT']=('envoy.config.endpoint.v3.Endpoint',[('address',M('ADDRESS'))])
T['LB_ENDPOINT']=('envoy.config.endpoint.v3.LbEndpoint',[('endpoint',M('ENDPOINT')),('health_status',L),('load_balancing_weight',L),('metadata',L)])
T['LOCALITY_LB_ENDPOINTS']=('envoy.config.endpoint.v3.LocalityLbEndpoints',[('locality',L),('lb_endpoints',M('LB_ENDPOINT')),('load_balancing_weight',L),('priority',L)])
T['CLA_POLICY']=('envoy.config.endpoint.v3.ClusterLoadAssignment.Policy',[('overprovisioning_factor',L)])
T['CLUSTER_LOAD_ASSIGNMENT']=('envoy.config.endpoint.v3.ClusterLoadAssignment',[('cluster_name',L),('endpoints',M('LOCALITY_LB_ENDPOINTS')),('policy',M('CLA_POLICY'))])
T['HTTP2_OPTIONS']=('envoy.config.core.v3.Http2ProtocolOptions',[('max_concurrent_streams',L)])
T['HTTP_VERSION_CONFIG']=('envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig',[('http_protocol_options',L),('http2_protocol_options',M('HTTP2_OPTIONS'))])
T['DOWNSTREAM_HTTP_CONFIG']=('envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig',[('http_protocol_options',L),('http2_protocol_options',M('HTTP2_OPTIONS'))])
T['COMMON_HTTP_OPTIONS']=('envoy.config.core.v3.HttpProtocolOptions',[('idle_timeout',L),('max_connection_duration',L),('max_requests_per_connection',L)])
T['UPSTREAM_HTTP_OPTIONS']=('envoy.config.core.v3.UpstreamHttpProtocolOptions',[('auto_sni',L),('auto_san_validation',L)])
T['HTTP_PROTOCOL_OPTIONS']=(HPO_T,[('explicit_http_config',M('HTTP_VERSION_CONFIG')),('use_downstream_protocol_config',M('DOWNSTREAM_HTTP_CONFIG')),('upstream_http_protocol_options',M('UPSTREAM_HTTP_OPTIONS')),('common_http_protocol_options',M('COMMON_HTTP_OPTIONS'))])
T['EDS_CLUSTER_CONFIG']=('envoy.config.cluster.v3.Cluster.EdsClusterConfig',[('eds_config',M('CONFIG_SOURCE')),('service_name',L)])
T['COMMON_LB_CONFIG']=('envoy.config.cluster.v3.Cluster.CommonLbConfig',[('healthy_panic_threshold',L),('locality_weighted_lb_config',L)])
T['OUTLIER_DETECTION']=('envoy.config.cluster.v3.OutlierDetection',[(f,L) for f in ('consecutive_5xx','interval','base_ejection_time','max_ejection_percent','enforcing_consecutive_5xx','enforcing_success_rate','success_rate_minimum_hosts','success_rate_request_volume','success_rate_stdev_factor','consecutive_gateway_failure','enforcing_consecutive_gateway_failure','split_external_local_origin_errors','consecutive_local_origin_failure','enforcing_consecutive_local_origin_failure','enforcing_local_origin_success_rate','failure_percentage_threshold','enforcing_failure_percentage','enforcing_failure_percentage_local_origin','failure_percentage_minimum_hosts','failure_percentage_request_volume','max_ejection_time','max_ejection_time_jitter','successful_active_health_check_uneject_host','always_eject_one_host')])
T['RETRY_BUDGET']=('envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget',[('budget_percent',L),('min_retry_concurrency',L)])
T['CB_THRESHOLDS']=('envoy.config.cluster.v3.CircuitBreakers.Thresholds',[('priority',L),('max_connections',L),('max_pending_requests',L),('max_requests',L),('max_retries',L),('track_remaining',L),('retry_budget',M('RETRY_BUDGET'))])
T['CIRCUIT_BREAKERS']=('envoy.config.cluster.v3.CircuitBreakers',[('thresholds',M('CB_THRESHOLDS'))])
T['TCP_KEEPALIVE']=('envoy.config.core.v3.TcpKeepalive',[('keepalive_probes',L),('keepalive_time',L),('keepalive_interval',L)])
T['UPSTREAM_CONNECTION_OPTIONS']=('envoy.config.cluster.v3.UpstreamConnectionOptions',[('tcp_keepalive',M('TCP_KEEPALIVE'))])
T['TRANSPORT_SOCKET_MATCH']=('envoy.config.cluster.v3.Cluster.TransportSocketMatch',[('name',L),('match',L),('transport_socket',M('TRANSPORT_SOCKET'))])
T['RUNTIME_DOUBLE']=('envoy.config.core.v3.RuntimeDouble',[('default_value',L),('runtime_key',L)])
T['PERCENT']=('envoy.type.v3.Percent',[('value',L)])
T['SLOW_START']=('envoy.config.cluster.v3.Cluster.SlowStartConfig',[('slow_start_window',L),('aggression',M('RUNTIME_DOUBLE')),('min_weight_percent',M('PERCENT'))])
T['RR_LB_CONFIG']=('envoy.config.cluster.v3.Cluster.RoundRobinLbConfig',[('slow_start_config',M('SLOW_START'))])
T['LR_LB_CONFIG']=('envoy.config.cluster.v3.Cluster.LeastRequestLbConfig',[('slow_start_config',M('SLOW_START'))])
T['CLUSTER']=('envoy.config.cluster.v3.Cluster',[('transport_socket',M('TRANSPORT_SOCKET')),('transport_socket_matches',M('TRANSPORT_SOCKET_MATCH')),('name',L),('alt_stat_name',L),('type',L),('eds_cluster_config',M('EDS_CLUSTER_CONFIG')),('connect_timeout',L),('lb_policy',L),('load_assignment',M('CLUSTER_LOAD_ASSIGNMENT')),('typed_extension_protocol_options',AM((HPO_T,'HTTP_PROTOCOL_OPTIONS'))),('metadata',L),('common_lb_config',M('COMMON_LB_CONFIG')),('dns_lookup_family',L),('dns_refresh_rate',L),('outlier_detection',M('OUTLIER_DETECTION')),('circuit_breakers',M('CIRCUIT_BREAKERS')),('upstream_connection_options',M('UPSTREAM_CONNECTION_OPTIONS')),('round_robin_lb_config',M('RR_LB_CONFIG')),('least_request_lb_config',M('LR_LB_CONFIG')),('ring_hash_lb_config',M('RING_HASH_LB_CONFIG')),('maglev_lb_config',M('MAGLEV_LB_CONFIG'))])
T['RING_HASH_LB_CONFIG']=('envoy.config.cluster.v3.Cluster.RingHashLbConfig',[('minimum_ring_size',L),('maximum_ring_size',L),('hash_function',L)])
T['MAGLEV_LB_CONFIG']=('envoy.config.cluster.v3.Cluster.MaglevLbConfig',[('table_size',L)])
T['ENVOY_GRPC']=('envoy.config.core.v3.GrpcService.EnvoyGrpc',[('cluster_name',L)])
T['GRPC_SERVICE']=('envoy.config.core.v3.GrpcService',[('envoy_grpc',M('ENVOY_GRPC')),('timeout',L)])
T['API_CONFIG_SOURCE']=('envoy.config.core.v3.ApiConfigSource',[('api_type',L),('transport_api_version',L),('grpc_services',M('GRPC_SERVICE')),('set_node_on_first_message_only',L)])
T['ADMIN']=('envoy.config.bootstrap.v3.Admin',[('address',M('ADDRESS')),('access_log',L)])
T['STATIC_RESOURCES']=('envoy.config.bootstrap.v3.Bootstrap.StaticResources',[('listeners',M('LISTENER')),('clusters',M('CLUSTER'))])
T['DYNAMIC_RESOURCES']=('envoy.config.bootstrap.v3.Bootstrap.DynamicResources',[('ads_config',M('API_CONFIG_SOURCE')),('cds_config',M('CONFIG_SOURCE')),('lds_config',M('CONFIG_SOURCE'))])
T['BOOTSTRAP']=('envoy.config.bootstrap.v3.Bootstrap',[('node',L),('admin',M('ADMIN')),('static_resources',M('STATIC_RESOURCES')),('dynamic_resources',M('DYNAMIC_RESOURCES'))])

PUBLIC={'LISTENER','CLUSTER','ROUTE_CONFIGURATION','CLUSTER_LOAD_ASSIGNMENT','BOOTSTRAP'}
out=[]
for tname,(msg,entries) in T.items():
    fm=fields[msg]
    assert fm or not entries, msg
    allowed=[]
    for fname,kind in entries:
        num,ftype,label=fm[fname]
        rep = 'true' if label=='list' else 'false'
        if kind==L: k='Field::Leaf'
        elif kind[0]=='M':
            sub=T[kind[1]][0]
            assert sub==ftype,(msg,fname,sub,ftype)
            k='Field::Msg(&%s)'%kind[1]
        elif kind[0]=='A':
            assert ftype=='google.protobuf.Any',(msg,fname)
            k='Field::Any(&[%s])'%', '.join('("%s", &%s)'%(t,n) for t,n in kind[1])
        elif kind[0]=='AM':
            assert label=='map'
            k='Field::AnyMap(&[%s])'%', '.join('("%s", &%s)'%(t,n) for t,n in kind[1])
        allowed.append('        ("%s", %d, %s, %s),'%(fname,num,rep,k))
    names=sorted((n,f) for f,(n,_,_) in fm.items())
    vis='pub ' if tname in PUBLIC else 'pub(super) '
    out.append('%sstatic %s: Schema = Schema {\n    message: "%s",\n    allowed: &[\n%s\n    ],\n    names: &[%s],\n};\n'%(vis,tname,msg,'\n'.join(allowed),', '.join('(%d, "%s")'%(n,f) for n,f in names)))
header='''//! Generated by `tools/gen_subset_tables.py` from Envoy's descriptors (field
//! numbers, all field names for error paths): the fields of each message the
//! proxy runs. Edit the spec in the script, not this file.

use super::{Field, Schema};

'''
out.append('/// Every table, for the test that checks numbers against the descriptors.\n#[cfg(test)]\npub(super) static ALL: &[&Schema] = &[%s];\n' % ', '.join('&'+t for t in T))
open(sys.argv[1] if len(sys.argv) > 1 else '/tmp/gen/tables.rs','w').write(header+'\n'.join(out))
print(len(out))

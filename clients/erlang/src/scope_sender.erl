%% scope_sender: sends batches of encoded events to Scope's
%% IngestService/Ingest (Connect protocol, JSON) over a socket it owns, one
%% request at a time. Started by scope_tracer, never traced: it spawns no
%% process for plain HTTP (gen_tcp from this process), and the processes
%% ssl starts for https are reported to the tracer, which excludes them.
%%
%% A batch is retried until it is acknowledged (HTTP 200: every event
%% committed/accepted or a duplicate of one stored) or refused for good
%% (a Connect error that no retry can fix: invalid_argument,
%% unauthenticated, permission_denied, unimplemented). Retries resend the
%% same bytes, so the same event ids: Scope stores each event once. After
%% a failed attempt the sender moves to the next endpoint and waits an
%% exponential backoff with full jitter (base backoff_ms, doubled per
%% consecutive failure up to max_backoff_ms).
-module(scope_sender).

-export([start_link/2, parse_endpoint/1, classify/2, backoff/3, request/4]).
%% internal
-export([init/2]).

-record(ep, {scheme, host, port, path}).
-record(s, {tracer, eps, cur = 1, sock, opts, fails = 0}).

-define(INGEST, "/scope.v1.IngestService/Ingest").

start_link(Tracer, Opts) ->
    Eps = [parse_endpoint(E) || E <- endpoints(maps:get(endpoint, Opts))],
    {ok, spawn_link(?MODULE, init, [Tracer, Opts#{eps => Eps}])}.

endpoints(L) when is_list(L), L =/= [], not is_integer(hd(L)) -> L;
endpoints(E) -> [E].

%% parse_endpoint/1: "http://host:port" or "https://host:port", with an
%% optional path prefix (a proxy); binary or string.
parse_endpoint(E) when is_binary(E) -> parse_endpoint(binary_to_list(E));
parse_endpoint(E) when is_list(E) ->
    case uri_string:parse(E) of
        #{scheme := Sch, host := H} = U when Sch =:= "http"; Sch =:= "https" ->
            Default = case Sch of "http" -> 80; "https" -> 443 end,
            Prefix = string:trim(maps:get(path, U, ""), trailing, "/"),
            #ep{scheme = list_to_atom(Sch), host = H, port = maps:get(port, U, Default),
                path = Prefix ++ ?INGEST};
        _ -> error({bad_endpoint, E, "want http://host:port or https://host:port"})
    end;
parse_endpoint(E) -> error({bad_endpoint, E, "want a string"}).

init(Tracer, Opts) ->
    process_flag(trap_exit, false),
    rand:seed(exsss),
    loop(#s{tracer = Tracer, eps = maps:get(eps, Opts), opts = Opts}).

loop(S) ->
    receive
        {batch, Ref, Events} ->
            Body = body(Events, maps:get(durability, S#s.opts, committed)),
            S1 = deliver(Ref, Body, length(Events), 0, S),
            loop(S1)
    end.

body(Events, Durability) ->
    D = case Durability of committed -> <<"DURABILITY_COMMITTED">>; accepted -> <<"DURABILITY_ACCEPTED">> end,
    iolist_to_binary([<<"{\"durability\":\"">>, D, <<"\",\"events\":[">>, lists:join($,, Events), <<"]}">>]).

%% deliver/5 sends one batch until it is acknowledged or refused, and tells
%% the tracer after every attempt.
deliver(Ref, Body, N, Attempt, S) ->
    S#s.tracer ! {sender, Ref, attempt, N, Attempt > 0},
    {Result, S1} = attempt(Body, S),
    case classify_result(Result) of
        ack ->
            S1#s.tracer ! {sender, Ref, done, acked},
            S1#s{fails = 0};
        refuse ->
            S1#s.tracer ! {sender, Ref, done, {refused, summary(Result)}},
            S1#s{fails = 0};
        retry ->
            S1#s.tracer ! {sender, Ref, retry, summary(Result)},
            S2 = next_endpoint(close(S1)),
            Fails = S2#s.fails + 1,
            timer:sleep(backoff(Fails, maps:get(backoff_ms, S#s.opts, 100),
                                maps:get(max_backoff_ms, S#s.opts, 5000))),
            deliver(Ref, Body, N, Attempt + 1, S2#s{fails = Fails})
    end.

%% summary/1: what stats' last_error shows of a failed attempt:
%% {http, Status, ConnectCode, Message} (the message cut at 300 bytes) or
%% {error, Reason}.
summary({ok, Status, Body}) ->
    {Code, Msg} = try scope_json:decode(Body) of
                      #{<<"code">> := C} = M -> {C, maps:get(<<"message">>, M, <<>>)};
                      _ -> {undefined, Body}
                  catch _:_ -> {undefined, Body}
                  end,
    {http, Status, Code, binary:part(Msg, 0, min(300, byte_size(Msg)))};
summary(E) -> E.

classify_result({ok, 200, _}) -> ack;
classify_result({ok, Status, Body}) -> classify(Status, Body);
classify_result({error, _}) -> retry.

%% classify/2: a non-200 answer is refused for good when its Connect code
%% says no retry can succeed; anything else (unavailable,
%% resource_exhausted, deadline_exceeded, a proxy's 502...) is retried.
classify(_Status, Body) ->
    Code = try scope_json:decode(Body) of
               #{<<"code">> := C} -> C;
               _ -> undefined
           catch _:_ -> undefined
           end,
    case Code of
        <<"invalid_argument">> -> refuse;
        <<"unauthenticated">> -> refuse;
        <<"permission_denied">> -> refuse;
        <<"unimplemented">> -> refuse;
        _ -> retry
    end.

%% backoff/3: full jitter over min(Max, Base * 2^(Fails-1)) milliseconds.
backoff(Fails, Base, Max) ->
    Cap = min(Max, Base bsl min(Fails - 1, 20)),
    rand:uniform(max(1, Cap)).

next_endpoint(#s{eps = Eps, cur = C} = S) ->
    S#s{cur = (C rem length(Eps)) + 1}.

close(#s{sock = undefined} = S) -> S;
close(#s{sock = {Mod, Sock}} = S) -> _ = Mod:close(Sock), S#s{sock = undefined}.

%% attempt/2 makes one request. A kept-alive connection the server closed
%% while idle fails before any answer: that is retried at once on a new
%% connection, not counted as a failed attempt.
attempt(Body, S) ->
    Reused = S#s.sock =/= undefined,
    case attempt1(Body, S) of
        {{error, {Stage, closed}}, S1} when Reused, Stage =:= send; Reused, Stage =:= recv ->
            attempt1(Body, S1);
        Other -> Other
    end.

attempt1(Body, S) ->
    Ep = lists:nth(S#s.cur, S#s.eps),
    case connect(Ep, S) of
        {ok, S1} ->
            case request(S1#s.sock, Ep, Body, S1#s.opts) of
                {ok, Status, RespBody, keep} -> {{ok, Status, RespBody}, S1};
                {ok, Status, RespBody, close} -> {{ok, Status, RespBody}, close(S1)};
                {error, _} = E -> {E, close(S1)}
            end;
        {error, _} = E -> {E, S}
    end.

connect(_Ep, #s{sock = {_, _}} = S) -> {ok, S};
connect(#ep{scheme = http, host = H, port = P}, S) ->
    case gen_tcp:connect(H, P, [binary, {active, false}, {packet, raw}, {nodelay, true}],
                         maps:get(connect_timeout, S#s.opts, 5000)) of
        {ok, Sock} -> {ok, S#s{sock = {gen_tcp, Sock}}};
        {error, R} -> {error, {connect, H, P, R}}
    end;
connect(#ep{scheme = https, host = H, port = P}, S) ->
    TlsOpts = case maps:get(cacertfile, S#s.opts, undefined) of
                  undefined -> [{verify, verify_peer}, {cacerts, public_key:cacerts_get()}];
                  F -> [{verify, verify_peer}, {cacertfile, F}]
              end,
    _ = application:ensure_all_started(ssl),
    case ssl:connect(H, P, [binary, {active, false}, {packet, raw}, {server_name_indication, H},
                            {customize_hostname_check, [{match_fun, public_key:pkix_verify_hostname_match_fun(https)}]}
                            | TlsOpts], maps:get(connect_timeout, S#s.opts, 5000)) of
        {ok, Sock} ->
            %% ssl runs the connection in processes of its own: the tracer
            %% must never trace them (procs => new would).
            S#s.tracer ! {sender_helpers, ssl_pids(Sock)},
            {ok, S#s{sock = {ssl, Sock}}};
        {error, R} -> {error, {connect, H, P, R}}
    end.

ssl_pids(Sock) ->
    [P || P <- lists:flatten([element(I, Sock) || I <- lists:seq(1, tuple_size(Sock)), is_list(element(I, Sock)) orelse is_pid(element(I, Sock))]),
          is_pid(P)].

%% request/4 posts Body and reads the answer: {ok, Status, Body, keep |
%% close} or {error, Reason}.
request({Mod, Sock}, #ep{host = H, port = P, path = Path}, Body, Opts) ->
    Auth = case maps:get(token, Opts, undefined) of
               undefined -> [];
               T -> ["Authorization: Bearer ", T, "\r\n"]
           end,
    Req = ["POST ", Path, " HTTP/1.1\r\nHost: ", H, ":", integer_to_list(P),
           "\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nContent-Length: ",
           integer_to_list(byte_size(Body)), "\r\n", Auth, "\r\n", Body],
    Deadline = erlang:monotonic_time(millisecond) + maps:get(request_timeout, Opts, 15000),
    case Mod:send(Sock, Req) of
        ok -> response({Mod, Sock}, Deadline);
        {error, R} -> {error, {send, R}}
    end.

response(Sock, Deadline) ->
    try
        {{http_response, _, Status, _}, R0} = packet(http_bin, Sock, <<>>, Deadline),
        {Hdrs, R1} = headers(Sock, R0, Deadline, #{}),
        {Body, _} = case Hdrs of
                        #{chunked := true} -> chunks(Sock, R1, Deadline, []);
                        #{length := L} -> bytes(Sock, R1, L, Deadline);
                        _ -> {<<>>, R1}
                    end,
        Keep = case maps:get(close, Hdrs, false) of true -> close; false -> keep end,
        {ok, Status, Body, Keep}
    catch
        throw:{error, _} = E -> E;
        error:{badmatch, Bad} -> {error, {bad_response, Bad}}
    end.

headers(Sock, Buf, Deadline, Acc) ->
    case packet(httph_bin, Sock, Buf, Deadline) of
        {http_eoh, R} -> {Acc, R};
        {{http_header, _, 'Content-Length', _, V}, R} ->
            headers(Sock, R, Deadline, Acc#{length => binary_to_integer(V)});
        {{http_header, _, 'Transfer-Encoding', _, V}, R} ->
            headers(Sock, R, Deadline, Acc#{chunked => string:lowercase(V) =:= <<"chunked">>});
        {{http_header, _, 'Connection', _, V}, R} ->
            headers(Sock, R, Deadline, Acc#{close => string:lowercase(V) =:= <<"close">>});
        {{http_header, _, _, _, _}, R} -> headers(Sock, R, Deadline, Acc)
    end.

chunks(Sock, Buf, Deadline, Acc) ->
    {Line, R} = packet(line, Sock, Buf, Deadline),
    [SizeHex | _] = binary:split(string:trim(Line), <<";">>),
    case binary_to_integer(SizeHex, 16) of
        0 -> {_, R1} = packet(line, Sock, R, Deadline),   % trailer end (no trailers sent)
             {iolist_to_binary(lists:reverse(Acc)), R1};
        N -> {Chunk, R1} = bytes(Sock, R, N + 2, Deadline),
             chunks(Sock, R1, Deadline, [binary:part(Chunk, 0, N) | Acc])
    end.

packet(Type, Sock, Buf, Deadline) ->
    case erlang:decode_packet(Type, Buf, []) of
        {ok, P, R} -> {P, R};
        {more, _} -> packet(Type, Sock, <<Buf/binary, (recv(Sock, Deadline))/binary>>, Deadline);
        {error, R} -> throw({error, {bad_response, R}})
    end.

bytes(_Sock, Buf, N, _Deadline) when byte_size(Buf) >= N ->
    <<B:N/binary, R/binary>> = Buf,
    {B, R};
bytes(Sock, Buf, N, Deadline) ->
    bytes(Sock, <<Buf/binary, (recv(Sock, Deadline))/binary>>, N, Deadline).

recv({Mod, Sock}, Deadline) ->
    case Mod:recv(Sock, 0, max(0, Deadline - erlang:monotonic_time(millisecond))) of
        {ok, B} -> B;
        {error, R} -> throw({error, {recv, R}})
    end.

<?php
/*
 * RECONSTRUCTION, FOR BENCHMARKS ONLY - not the old service's code.
 *
 * The shape of the old OTP service's send and check endpoints (POST /sms, POST /call,
 * GET /sms/check, GET /call/check), written from otpd's COMPAT.md so that `make bench`
 * can compare otpd with "what was there before" on the same machine in the same run.
 * What it keeps of the old service: PHP behind a FastCGI process manager, PDO, one
 * request = parameters from the query string overridden by a JSON body, trimmed strings,
 * the "\"x\" parameter must be set" answers in the documented field order, the limit
 * rules of otp_limit checked by counting otp_password rows, the code stored in CLEAR
 * TEXT, and on send a synchronous POST of the Queue body to {OTP_QUEUE_URL}/task (whose
 * answer and failures are ignored, as the old service did); a check is true when any
 * unexpired code of that target (sms or call for /sms/check) equals the password.
 * What it leaves out: the web framework the old service ran on (its bootstrap cost per
 * request is not paid here, so this is a FAST version of the old shape), /email,
 * /telegram, /limit/*, /target and /password.
 *
 * Configuration comes as FastCGI parameters (nginx `fastcgi_param`):
 *   LEGACY_DSN          PDO DSN: sqlite:/path/db or pgsql:host=...;port=...;dbname=...
 *   LEGACY_PERSISTENT   "1": persistent PDO connections (stands in for the pooler the
 *                       old deployment had in front of PostgreSQL)
 *   LEGACY_QUEUE_URL    the Queue; empty: deliver nothing (like DUMMY=true)
 */
declare(strict_types=0);

function answer(int $status, array $body): void
{
	http_response_code($status);
	header('Content-Type: application/json');
	echo json_encode($body);
	exit;
}

function missing(string $name): void
{
	answer(400, ['status' => false, 'message' => "\"$name\" parameter must be set"]);
}

/* A trimmed string parameter, NULL when absent or empty. */
function param(array $p, string $name)
{
	if (!array_key_exists($name, $p) || $p[$name] === null)
		return null;
	$v = $p[$name];
	if (is_string($v)) {
		$v = trim($v);
		return $v === '' ? null : $v;
	}
	return $v;
}

function db(): PDO
{
	$dsn = $_SERVER['LEGACY_DSN'] ?? '';
	$persistent = ($_SERVER['LEGACY_PERSISTENT'] ?? '') === '1';
	$pdo = new PDO($dsn, null, null, [
		PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
		PDO::ATTR_PERSISTENT => $persistent,
		PDO::ATTR_TIMEOUT => 10, /* SQLite: busy timeout, seconds */
	]);
	if (str_starts_with($dsn, 'sqlite:'))
		$pdo->exec('PRAGMA synchronous = FULL'); /* durable commits, as otpd's */
	return $pdo;
}

function is_pg(PDO $pdo): bool
{
	return $pdo->getAttribute(PDO::ATTR_DRIVER_NAME) === 'pgsql';
}

/* Parameters: the query string, then the body parsed as JSON whatever the Content-Type;
 * body fields override query fields; for every method. */
$params = $_GET;
$raw = file_get_contents('php://input');
if ($raw !== false && $raw !== '') {
	$json = json_decode($raw, true);
	if (is_array($json))
		$params = array_merge($params, $json);
}

$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';
const SMS = 0, CALL = 2;
const TARGET = 0, IP = 1;

if ($method === 'POST' && ($path === '/sms' || $path === '/call')) {
	$channel = $path === '/sms' ? SMS : CALL;
	$phone = param($params, 'phone');
	if ($phone === null) missing('phone');
	$password = param($params, 'password');
	if ($password === null) missing('password');
	$password = (string)$password;
	$message = null;
	if ($channel === SMS) {
		$message = param($params, 'message');
		if ($message === null) missing('message');
		$message = (string)$message;
	}
	$lifetime = param($params, 'lifetime');
	if ($lifetime === null) missing('lifetime');
	$lifetime = (int)$lifetime;
	$ip = param($params, 'ip');

	$pdo = db();
	$pg = is_pg($pdo);
	$rules = $pdo->prepare('SELECT measure, rate, minutes FROM otp_limit WHERE channel = ? ORDER BY id');
	$rules->execute([$channel]);
	$rules = $rules->fetchAll(PDO::FETCH_ASSOC);
	foreach ($rules as $r)
		if ((int)$r['measure'] === IP && $ip === null)
			missing('ip');
	foreach ($rules as $r) {
		$col = (int)$r['measure'] === IP ? 'ip' : 'target';
		$since = $pg ? "now() - make_interval(mins => ?)" : "strftime('%s','now') - ? * 60";
		$q = $pdo->prepare("SELECT count(*) FROM otp_password WHERE channel = ? AND $col = ? AND created_at > $since");
		$q->execute([$channel, $col === 'ip' ? $ip : $phone, (int)$r['minutes']]);
		if ((int)$q->fetchColumn() >= (int)$r['rate']) {
			if ($col === 'ip')
				answer(400, ['status' => false, 'status_code' => 'ip_limit', 'message' => 'IP limit has been reached']);
			answer(400, ['status' => false, 'status_code' => 'phone_limit', 'message' => 'Phone limit has been reached']);
		}
	}
	$ins = $pdo->prepare($pg
		? "INSERT INTO otp_password (channel, target, password, ip, expire_at, created_at) VALUES (?, ?, ?, ?, now() + make_interval(secs => ?), now())"
		: "INSERT INTO otp_password (channel, target, password, ip, expire_at, created_at) VALUES (?, ?, ?, ?, strftime('%s','now') + ?, strftime('%s','now'))");
	$ins->execute([$channel, $phone, $password, $ip, $lifetime]);

	$queue = $_SERVER['LEGACY_QUEUE_URL'] ?? '';
	if ($queue !== '') {
		$job = $channel === SMS
			? ['url' => 'http://sms/sms', 'method' => 'post', 'worker' => 'sms',
			   'json' => ['phones' => $phone, 'message' => $message, 'type' => 'sms', 'force' => true]]
			: ['url' => 'http://sms/sms', 'method' => 'post', 'worker' => 'sms',
			   'json' => ['phones' => $phone, 'message' => implode(' ', str_split($password)), 'type' => 'call', 'force' => true]];
		$ctx = stream_context_create(['http' => [
			'method' => 'POST',
			'header' => "Content-Type: application/json\r\n",
			'content' => json_encode($job),
			'timeout' => 5,
			'ignore_errors' => true,
		]]);
		@file_get_contents($queue . '/task', false, $ctx); /* the old service ignored the answer */
	}
	answer(200, ['status' => true]);
}

if ($method === 'GET' && ($path === '/sms/check' || $path === '/call/check')) {
	$phone = param($params, 'phone');
	if ($phone === null) missing('phone');
	$password = param($params, 'password');
	if ($password === null) missing('password');
	$pdo = db();
	$channels = $path === '/sms/check' ? '0, 2' : '2';
	$q = $pdo->prepare(is_pg($pdo)
		? "SELECT 1 FROM otp_password WHERE channel IN ($channels) AND target = ? AND password = ? AND expire_at > now() LIMIT 1"
		: "SELECT 1 FROM otp_password WHERE channel IN ($channels) AND target = ? AND password = ? AND expire_at > strftime('%s','now') LIMIT 1");
	$q->execute([(string)$phone, (string)$password]);
	answer(200, ['status' => $q->fetchColumn() !== false]);
}

http_response_code(404);
header('Content-Type: text/plain');
echo 'Page not found';
